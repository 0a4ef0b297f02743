"""etpp-dali: EfficientTrain++ curriculum training on an NVIDIA DALI data pipeline."""

__version__ = "0.1.0"

from .curriculum import Curriculum, SchedulePosition, ScheduleError, Stage, StageSpec  # noqa: E402
from .fourier import FourierCropper, fourier_crop  # noqa: E402

__all__ = ["Curriculum", "FourierCropper", "SchedulePosition", "ScheduleError", "Stage", "StageSpec",
           "__version__", "fourier_crop"]
