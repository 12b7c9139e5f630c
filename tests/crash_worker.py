"""Run `hafrm ARGV...` and die by SIGKILL at a chosen point, as a crash or an OOM kill would.

python tests/crash_worker.py step 5 train --model M --output-dir D ...        # during step 5
python tests/crash_worker.py checkpoint 4 train ...   # writing checkpoint-4: weights on disk, optimizer not
python tests/crash_worker.py reference 2 train ...    # in the reference pass, at its 2nd batch
"""

import os
import signal
import sys


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    point, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    import transformers

    from hafrm import reference
    from hafrm.cli import main as hafrm_main
    from hafrm.trainer import HybridTrainer

    if point == "step":
        original_step = HybridTrainer.training_step

        def training_step(self, *args, **kwargs):
            if self.state.global_step + 1 == at:
                die()
            return original_step(self, *args, **kwargs)

        HybridTrainer.training_step = training_step
    elif point == "checkpoint":
        original_save = transformers.Trainer._save_optimizer_and_scheduler

        def save_optimizer_and_scheduler(self, output_dir):
            if self.state.global_step == at:
                die()
            return original_save(self, output_dir)

        transformers.Trainer._save_optimizer_and_scheduler = save_optimizer_and_scheduler
    elif point == "reference":
        original_forward = reference.hybrid_forward
        calls = []

        def hybrid_forward(*args, **kwargs):
            calls.append(1)
            if len(calls) == at:
                die()
            return original_forward(*args, **kwargs)

        reference.hybrid_forward = hybrid_forward
    else:
        raise SystemExit(f"unknown point {point!r}")
    return hafrm_main(argv)


if __name__ == "__main__":
    sys.exit(main())
