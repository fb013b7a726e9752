"""Small synthetic cohorts shared by the synth tests (built once per session)."""

from __future__ import annotations

import pytest

from pipelines.synth import SynthConfig, build_cohort

#: A coarse grid so a cohort builds in about a second; the anatomy is defined in mm.
SMALL = dict(shape=(42, 28, 64), spacing_mm=(12.0, 12.0, 15.0))


@pytest.fixture(scope="session")
def nifti_cohort(tmp_path_factory):
    config = SynthConfig(participants=3, seed=7, stations=3, **SMALL)
    out = tmp_path_factory.mktemp("synth_nifti")
    return config, build_cohort(config, out)


@pytest.fixture(scope="session")
def dicom_cohort(tmp_path_factory):
    config = SynthConfig(participants=2, seed=11, stations=2, format="dicom", myopathy=True,
                         shape=(24, 18, 40), spacing_mm=(20.0, 18.0, 24.0))
    out = tmp_path_factory.mktemp("synth_dicom")
    return config, build_cohort(config, out)
