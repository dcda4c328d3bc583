"""The preprocessing pipeline on real scanner DICOM (shared/data/real-mri, read in place).

None of these is a thoracolumbar metastasis study: two 35-slice head-and-neck T1 series
(Siemens 3 T, head first supine and prone) whose lower edge shows the cranio-cervical
junction, a lumbar T2 slice (Hitachi 0.3 T) and a cervical T2 slice (Siemens 1.5 T), both
single JPEG 2000 slices. The pipeline must run on each and its crop must land on the spine.

The annotations below were read off the images in patient coordinates (LPS, mm; y grows
towards the back, z towards the head) with a 10 mm grid: points on the spinal canal (or, for
the lumbar slice, which cuts the spine off the midline, on the vertebral column) and, for
the multi-slice series, the mid-sagittal plane (x of the slice through the brainstem and
the dens). "Lands on the spine" means every annotated point lies inside the crop: within the
rows, and between ``anterior_mm`` in front of the located canal and ``posterior_mm`` behind
it at that height; and, where there are slices to choose from, the chosen mid-sagittal plane
is within one slice (4 mm) of the annotated one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spinemet.common.dicom.scan import scan
from spinemet.common.preprocess.pipeline import default_pipeline
from spinemet.common.preprocess.runner import study_image

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-mri"

# name: (spine points as (y, z) mm, mid-sagittal x in mm or None for a single slice)
ANNOTATED = {
    "decubitus-HFS-t1-sag": ([(5.0, -100.0), (6.0, -120.0)], 0.0),
    # Prone, the head lies 10-14 mm to the right of the scanner's centre (slices x = -14
    # and -10 show the brainstem, the aqueduct and the dens; x = 0 is parasagittal).
    "decubitus-HFP-t1-sag": ([(57.0, -100.0), (58.0, -120.0)], -12.0),
    "lspine-t2-sag-hitachi-0.3T-j2k.dcm": ([(50.0, 50.0), (50.0, 0.0), (55.0, -50.0)], None),
    "cspine-t2-sag-siemens-1.5T-j2k-isoir13.dcm": ([(45.0, 0.0), (55.0, -50.0), (68.0, -100.0)],
                                                   None),
}


@pytest.fixture(scope="module", params=sorted(ANNOTATED))
def processed(request):
    path = REAL / request.param
    if not path.exists():
        pytest.skip(f"{path} not found: the real-scanner tests need shared/data/real-mri "
                    "beside the project (../shared)")
    res = scan([path], workers=1)
    assert len(res.studies) == 1, res.rejected
    img = default_pipeline()(study_image(res.studies[0]))
    return request.param, img


def test_pipeline_runs_and_gives_the_fixed_tensor(processed):
    _, img = processed
    assert img.image.shape == default_pipeline().output_shape
    assert np.isfinite(img.image).all()
    present = [ch for ch in range(3) if img.image[ch].any()]
    assert present, "the available sequence's channel is empty"


def test_crop_lands_on_the_spine(processed):
    name, img = processed
    points, mid_x = ANNOTATED[name]
    grid, sp = img.reformat, img.spine
    order = np.argsort(sp.z)
    z_top = img.box.origin[2]
    for y, z in points:
        assert z_top - grid.rows * grid.spacing_mm <= z <= z_top, (name, z)
        canal_y = float(np.interp(z, sp.z[order], sp.y[order]))
        assert canal_y - grid.anterior_mm <= y <= canal_y + grid.cols * grid.spacing_mm - \
            grid.anterior_mm, (name, (y, z), canal_y)
    if mid_x is not None:
        assert abs(sp.mid_x - mid_x) <= 4.0 + 1e-6, (name, sp.mid_x)
