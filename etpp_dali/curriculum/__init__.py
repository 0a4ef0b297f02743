"""The curriculum wing: EfficientTrain and EfficientTrain++ schedules as plain data (torch-free).

:class:`Curriculum` (stages, compute shares, the position in a run), the papers' presets, the
schedule file and its checks, and the per-stage batch sizes of a run. Nothing here imports torch
or DALI, so ``etpp schedule`` runs anywhere.
"""

from etpp_dali.util.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "Curriculum": "schedule",
    "Stage": "stages",
    "SchedulePosition": "schedule",
    "KINDS": "schedule",
    "ScheduleError": "schedule_file",
    "StageSpec": "schedule_file",
    "scale_band": "schedule_file",
    "read_schedule_file": "schedule_file",
    "parse_schedule": "schedule_file",
    "check_schedule": "schedule_file",
    "BASELINE_BUDGET": "schedule_file",
    "DEFAULT_BUDGET": "schedule_file",
    "REFERENCE_RESOLUTION": "schedule_file",
    "MIN_BAND": "schedule_file",
    "PRESETS": "presets",
    "FAMILIES": "presets",
    "preset_schedule": "presets",
    "BatchError": "batching",
    "resolve_stage_batches": "batching",
    "global_batch_size": "batching",
    "auto_stage_batch": "batching",
    "accumulation": "batching",
    "patch_curriculum": "patches",
    "mae_curriculum": "patches",
    "token_table": "patches",
})
