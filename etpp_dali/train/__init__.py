"""The train wing: a thin PyTorch trainer on timm models that moves the loader along the curriculum.

The run's settings and the recipes that fill them (:mod:`.config`, torch-free); the data of a
run (:mod:`.data`), models and their band rules, optimisation and the compute-based LR schedule,
checkpoints, processes and devices (and the torchrun relaunch), evaluation, the run's reports
(:mod:`.progress`), ``summary.json``, and :mod:`.measure`, which predicts a schedule's wall-clock
from timings on this machine. Masked-autoencoder pre-training on the curriculum (:mod:`.mae`),
its k-NN monitor (:mod:`.knn`), and ``--init-from``, which fine-tunes or probes a pre-trained
encoder (:mod:`.finetune`).
"""

from etpp_dali.util.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "TrainConfig": "config",
    "RecipeError": "config",
    "load_recipe": "config",
    "find_recipe": "config",
    "merge_recipe": "config",
    "Trainer": "trainer",
    "train": "trainer",
    "build_model": "models",
    "create_model": "models",
    "measure_rates": "measure",
    "predict_schedule_time": "measure",
    "MaskedAutoencoder": "mae",
    "build_mae": "mae",
    "knn_evaluate": "knn",
    "build_task_model": "finetune",
    "load_encoder": "finetune",
})
