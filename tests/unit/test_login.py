"""kopf logs in with the operator's own client credentials, however the client loaded them."""

from __future__ import annotations

import pytest
from kubernetes import client

from kubetrain.operator.handlers import login


@pytest.mark.parametrize(
    "api_key",
    [
        {"authorization": "bearer t0ken"},  # the in-cluster config (a Pod's ServiceAccount)
        {"authorization": "Bearer t0ken"},  # a kubeconfig with a token
        {"BearerToken": "t0ken"},
    ],
)
def test_the_token_reaches_kopf_without_its_scheme(api_key: dict[str, str]) -> None:
    configuration = client.Configuration(host="https://10.96.0.1:443", api_key=api_key)
    info = login(memo={"api_client": client.ApiClient(configuration)})
    assert (info.scheme, info.token) == ("Bearer", "t0ken")


def test_client_certificates_need_no_token() -> None:
    configuration = client.Configuration(host="https://127.0.0.1:6443")
    configuration.cert_file, configuration.key_file = "/pki/client.crt", "/pki/client.key"
    info = login(memo={"api_client": client.ApiClient(configuration)})
    assert (info.scheme, info.token, info.certificate_path) == (None, None, "/pki/client.crt")
