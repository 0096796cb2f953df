"""``cl-bench``: the project's benchmarks; each prints its figures and writes them where it says.

cl-bench lift --profile cpu  the paper's Table 2 (PQ^scene) and Table 6 (speed) on generated scenes
cl-bench speed               step time against nerfacto, scaling with objects, clustering, render fps
cl-bench losses              instance-loss cost against the number of labels
cl-bench make-scene          cl-make-scene's run time
"""

from __future__ import annotations

import tyro

from contrastive_lift_ns.benchmarks.lift import LiftBenchmark
from contrastive_lift_ns.benchmarks.loss_cost import LossCostBenchmark
from contrastive_lift_ns.benchmarks.make_scene_speed import MakeSceneBenchmark
from contrastive_lift_ns.benchmarks.speed import SpeedBenchmark


def entrypoint() -> None:
    benchmark = tyro.extras.subcommand_cli_from_dict(
        {
            "lift": LiftBenchmark,
            "speed": SpeedBenchmark,
            "losses": LossCostBenchmark,
            "make-scene": MakeSceneBenchmark,
        }
    )
    benchmark.main()


if __name__ == "__main__":
    entrypoint()
