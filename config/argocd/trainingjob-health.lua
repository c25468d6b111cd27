-- Argo CD health check for kubetrain.io/TrainingJob.
-- Install it under resource.customizations in argocd-cm (see docs/gitops.md).
local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetrain operator"
  return hs
end
if obj.metadata.generation ~= nil and status.observedGeneration ~= nil
    and status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on the latest spec"
  return hs
end

local function condition(type_)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type_ and c.status == "True" then
      return c
    end
  end
  return nil
end

local phase = status.phase
local percent = ""
if status.progress ~= nil and status.progress.percentage ~= nil then
  percent = string.format(" (%.1f%%)", status.progress.percentage)
end

if phase == "Completed" then
  hs.status = "Healthy"
  hs.message = "Training completed"
elseif phase == "Failed" then
  hs.status = "Degraded"
  local failed = condition("Failed")
  hs.message = failed ~= nil and failed.message or "Training failed"
elseif phase == "Stopped" then
  hs.status = "Suspended"
  local suspended = condition("Suspended")
  hs.message = suspended ~= nil and suspended.message or "Stopped"
elseif phase == "Queued" then
  hs.status = "Progressing"
  local queued = condition("Queued")
  hs.message = "Queued: " .. (queued ~= nil and queued.message or "waiting for GPUs")
else
  hs.status = "Progressing"
  hs.message = phase .. percent
end
return hs
