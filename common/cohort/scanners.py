"""Scanner profiles of the virtual hospitals and their clinical sagittal spine protocols.

Each site of the cohort scans on one of these profiles (cycled when there are more sites
than profiles). They differ the way real sites do: vendor, field strength (SNR), coil
sensitivity (bias field), matrix, field of view, slice thickness/count, TR/TE/TI, naming of
series, intensity scaling and the transfer syntax their PACS stores.

Protocols follow common lumbar/thoracolumbar sagittal practice: 11-13 slices of 3-5 mm with a
10 % gap, FOV 280-320 mm, in-plane matrix 256-320 (STIR often coarser), T1 TSE TR 450-650/TE
8-12 ms, T2 TSE TR 3000-4500/TE 90-110 ms, STIR TR 3500-5000/TE 40-70 ms, TI 150 ms at 1.5 T
and 210-230 ms at 3 T.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pydicom.uid import JPEGLSLossless, RLELossless, UID


@dataclass(frozen=True)
class SequenceProtocol:
    """Acquisition parameters of one sagittal series."""

    sequence: str                  # "T1" | "T2" | "STIR"
    description: str               # SeriesDescription as this vendor names it
    matrix: int                    # reconstructed Rows = Columns
    repetition_time: float         # ms
    echo_time: float               # ms
    inversion_time: float | None   # ms (STIR only)
    echo_train_length: int
    flip_angle: float


@dataclass(frozen=True)
class ScannerProfile:
    """One hospital's scanner and protocol."""

    manufacturer: str
    model: str
    field_strength: float          # tesla
    institution: str
    fov_mm: float                  # square field of view (rows and columns)
    slices: int
    slice_thickness: float         # mm
    slice_gap: float               # mm; SpacingBetweenSlices = thickness + gap
    snr: float                     # marrow-to-noise ratio on T1 before the bias field
    bias_strength: float           # posterior-coil fall-off depth (0 = flat)
    bias_ripple: float             # amplitude of the coil-element ripple along the spine
    intensity_scale: float         # stored value of fat on T1 (vendor scaling)
    rescale_slope: float           # Philips-style real-world scaling (1.0 = none)
    bits_stored: int
    phase_direction: str           # InPlanePhaseEncodingDirection
    ghost_probability: float       # chance a series carries motion/pulsation ghosts
    transfer_syntax: UID
    protocols: tuple[SequenceProtocol, ...] = field(default=())

    @property
    def slice_spacing(self) -> float:
        return self.slice_thickness + self.slice_gap

    def protocol(self, sequence: str) -> SequenceProtocol:
        for p in self.protocols:
            if p.sequence == sequence:
                return p
        raise KeyError(sequence)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["transfer_syntax"] = str(self.transfer_syntax)
        return d


def _protocols(names: tuple[str, str, str], matrices: tuple[int, int, int], tesla: float,
               tr: tuple[float, float, float], te: tuple[float, float, float]
               ) -> tuple[SequenceProtocol, ...]:
    ti = 150.0 if tesla < 2 else 220.0
    return (
        SequenceProtocol("T1", names[0], matrices[0], tr[0], te[0], None, 3, 150.0),
        SequenceProtocol("T2", names[1], matrices[1], tr[1], te[1], None, 17, 160.0),
        SequenceProtocol("STIR", names[2], matrices[2], tr[2], te[2], ti, 13, 150.0),
    )


PROFILES: tuple[ScannerProfile, ...] = (
    ScannerProfile(
        "SIEMENS", "Aera", 1.5, "North General Hospital", 300.0, 13, 4.0, 0.4,
        snr=22.0, bias_strength=0.55, bias_ripple=0.08, intensity_scale=520.0,
        rescale_slope=1.0, bits_stored=12, phase_direction="ROW", ghost_probability=0.10,
        transfer_syntax=JPEGLSLossless,
        protocols=_protocols(("t1_tse_sag", "t2_tse_sag", "t2_tirm_sag_STIR"), (320, 320, 256),
                             1.5, (550, 3500, 4000), (10, 95, 55))),
    ScannerProfile(
        "GE MEDICAL SYSTEMS", "SIGNA Architect", 3.0, "Lakeside University Hospital", 280.0,
        13, 3.5, 0.5, snr=34.0, bias_strength=0.80, bias_ripple=0.12, intensity_scale=1000.0,
        rescale_slope=1.0, bits_stored=16, phase_direction="COL", ghost_probability=0.15,
        transfer_syntax=JPEGLSLossless,
        protocols=_protocols(("Sag T1 FSE", "Sag T2 FSE", "Sag STIR"), (288, 288, 256),
                             3.0, (600, 4200, 4800), (9, 105, 42))),
    ScannerProfile(
        "Philips", "Ingenia", 1.5, "St. Mary's Regional", 320.0, 13, 4.0, 0.4,
        snr=20.0, bias_strength=0.45, bias_ripple=0.06, intensity_scale=560.0,
        rescale_slope=1.4652, bits_stored=12, phase_direction="ROW", ghost_probability=0.10,
        transfer_syntax=RLELossless,
        protocols=_protocols(("sT1W_TSE", "sT2W_TSE", "sSTIR"), (288, 288, 256),
                             1.5, (500, 3300, 3800), (8, 100, 60))),
    ScannerProfile(
        "SIEMENS", "Skyra", 3.0, "Eastside Cancer Centre", 300.0, 13, 3.0, 0.3,
        snr=30.0, bias_strength=0.70, bias_ripple=0.10, intensity_scale=700.0,
        rescale_slope=1.0, bits_stored=12, phase_direction="ROW", ghost_probability=0.12,
        transfer_syntax=JPEGLSLossless,
        protocols=_protocols(("t1_tse_sag_p2", "t2_tse_sag_p2", "stir_tse_sag"), (320, 320, 256),
                             3.0, (650, 3800, 4500), (11, 92, 50))),
    ScannerProfile(
        "Canon Medical Systems", "Vantage Orian", 1.5, "West County Hospital", 320.0, 11, 5.0,
        0.5, snr=17.0, bias_strength=0.40, bias_ripple=0.05, intensity_scale=420.0,
        rescale_slope=1.0, bits_stored=12, phase_direction="COL", ghost_probability=0.08,
        transfer_syntax=JPEGLSLossless,
        protocols=_protocols(("SAG T1 FSE", "SAG T2 FSE", "SAG STIR"), (256, 256, 224),
                             1.5, (480, 3000, 3600), (12, 110, 65))),
)


def site_name(index: int) -> str:
    """Name of the index-th site: hospital-a, hospital-b, ..., hospital-z, hospital-aa, ..."""
    letters = ""
    n = index
    while True:
        letters = chr(ord("a") + n % 26) + letters
        n = n // 26 - 1
        if n < 0:
            return f"hospital-{letters}"


def profile_for_site(index: int) -> ScannerProfile:
    return PROFILES[index % len(PROFILES)]
