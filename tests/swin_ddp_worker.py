"""Run under torchrun by tests/test_band_change.py: the tiny Swin trained with DDP (gloo, CPU)
across its band change. Each rank then writes its weights, the weights just after the change to
the high band, and whether every parameter is still in its optimiser.

    python -m torch.distributed.run --standalone --nproc_per_node=2 swin_ddp_worker.py DATA SCHEDULE OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_swin  # noqa: E402  (registers the model with timm)

from etpp_dali.train.config import TrainConfig  # noqa: E402
from etpp_dali.train.distributed import init_from_env  # noqa: E402
from etpp_dali.train.models import unwrap_model  # noqa: E402
from etpp_dali.train.trainer import Trainer  # noqa: E402


def main(data: str, schedule: str, out: str) -> None:
    init_from_env()
    rank = torch.distributed.get_rank()
    cfg = TrainConfig(data=data, model=tiny_swin.NAME, preset=schedule, resolution=tiny_swin.RESOLUTION,
                      batch_size=16, lr=2e-3, warmup_epochs=0.0, progress=False, threads=1, output=out)
    trainer = Trainer(cfg)
    at_high_band: dict[str, torch.Tensor] = {}
    set_band = trainer.optim.set_band

    def set_band_and_keep_the_weights(band: int) -> None:
        set_band(band)
        if band == tiny_swin.BANDS[-1] and not at_high_band:
            at_high_band.update({k: v.clone() for k, v in unwrap_model(trainer.model).state_dict().items()})

    trainer.optim.set_band = set_band_and_keep_the_weights
    try:
        trainer.run()
    finally:
        trainer.close()
    model = unwrap_model(trainer.model)
    in_optimiser = {id(p) for group in trainer.optim.optimizer.param_groups for p in group["params"]}
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "at_high_band": at_high_band,
                "tables_in_optimiser": all(id(p) in in_optimiser for p in model.parameters())},
               Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
