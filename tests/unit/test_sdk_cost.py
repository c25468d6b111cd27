"""Cost estimates from a GPU catalogue, and reading the catalogue from the operator config."""

from __future__ import annotations

import pytest

from kubetrain.api.catalogue import Catalogue
from kubetrain.sdk import ValidationError
from kubetrain.sdk.cost import catalogue_from_config, estimate

DEFAULTS = Catalogue()


def test_gpu_types_are_priced_per_gpu_hour() -> None:
    found = estimate(DEFAULTS, "a100", workers=2, gpus_per_worker=4, hours=10)
    assert (found.price_per_hour, found.billed_units) == (3.0, 8)
    assert (found.hourly_usd, found.total_usd) == (24.0, 240.0)
    assert found.source == "cluster" and found.warning is None


def test_cpu_is_priced_per_worker_hour_whatever_the_gpus_per_worker() -> None:
    found = estimate(DEFAULTS, "cpu", workers=3, gpus_per_worker=4, hours=0.5)
    assert (found.billed_units, found.gpus_per_worker) == (3, 0)
    assert found.hourly_usd == pytest.approx(0.3) and found.total_usd == pytest.approx(0.15)


def test_without_hours_there_is_no_total_and_no_type_means_the_default() -> None:
    found = estimate(DEFAULTS, None)
    assert found.gpu_type == "a100" and found.total_usd is None and found.hours is None


def test_an_unknown_type_or_bad_counts_are_validation_errors() -> None:
    with pytest.raises(ValidationError) as unknown:
        estimate(DEFAULTS, "tpu", source="defaults")
    assert unknown.value.field == "gpuType"
    assert "'tpu' is not in the GPU catalogue (defaults); available: a100, a10g, cpu" in str(
        unknown.value
    )
    with pytest.raises(ValidationError) as bad:
        estimate(DEFAULTS, "a100", workers=0, gpus_per_worker=0, hours=-1)
    assert [c.field for c in bad.value.causes] == ["workers", "gpusPerWorker", "hours"]


def test_the_config_files_catalogue_is_laid_over_the_defaults() -> None:
    catalogue = catalogue_from_config(
        "statusIntervalSeconds: 3\n"
        "catalogue:\n"
        "  defaultType: l4\n"
        "  gpuTypes:\n"
        "    a100: {pricePerHour: 2.0}\n"
        "    mi300x: {pricePerHour: 3.5, products: [AMD-MI300X]}\n"
    )
    assert catalogue.default_type == "l4"
    assert estimate(catalogue, "a100").hourly_usd == 2.0
    assert estimate(catalogue, "mi300x", gpus_per_worker=8).hourly_usd == 28.0
    assert estimate(catalogue, "h100").hourly_usd == 4.5  # a default still there


def test_replace_defaults_keeps_only_the_configured_types() -> None:
    catalogue = catalogue_from_config(
        "catalogue: {replaceDefaults: true, gpuTypes: {a100: {pricePerHour: 1}}}"
    )
    assert catalogue.names == ["a100"]
    assert catalogue_from_config("").names == DEFAULTS.names  # an empty config: defaults


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a list", "not a mapping"),
        ("catalogue: {gpuTypes: {a100: {pricePerHour: -1}}}", "catalogue.gpuTypes.a100"),
        ("catalogue: {gpuTypes: {a100: {price: 1}}}", "Extra inputs"),
    ],
)
def test_a_bad_config_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        catalogue_from_config(text)


def test_estimates_serialise_in_camel_case() -> None:
    data = estimate(DEFAULTS, "h100", workers=2, hours=1).as_dict()
    assert data == {
        "gpuType": "h100",
        "workers": 2,
        "gpusPerWorker": 1,
        "pricePerHour": 4.5,
        "billedUnits": 2,
        "hourlyUSD": 9.0,
        "hours": 1,
        "totalUSD": 9.0,
        "source": "cluster",
        "warning": None,
    }
