"""DVC stage `syncnet@<avatar>`: train the avatar's SyncNet (in-sync vs off-sync pairs).

Besides the checkpoint it writes, for `dvc metrics show` / `dvc plots show`,
the held-out validation metrics (eval/<avatar>/syncnet.json) and the offset
curve on the held-out frames (eval/<avatar>/plots/syncnet_offsets.json, drawn
in syncnet_offsets.png): mean face/audio distance per offset, lowest at 0 for
a SyncNet that works.
"""

from __future__ import annotations

import logging

from stages._common import run_stage, write_json
from synctalk.config import Config
from synctalk.paths import AvatarPaths
from synctalk.tracking import log_offset_curve_plot
from synctalk.train.run import train_syncnet

log = logging.getLogger("stages.syncnet")


def syncnet(name: str, config: Config, paths: AvatarPaths) -> None:
    result = train_syncnet(name, config, paths)
    sync = result.sync
    write_json(
        paths.syncnet_metrics,
        {
            **{k: round(float(v), 6) for k, v in result.metrics.items()},
            **{f"val_{k}": round(float(v), 6) for k, v in sync.as_metrics().items()},
        },
    )
    write_json(
        paths.plots / "syncnet_offsets.json",
        [
            {"offset": int(o), "distance": float(d)}
            for o, d in zip(sync.offsets, sync.distances, strict=True)
        ],
    )
    title = f"SyncNet {name}: held-out frames"
    log_offset_curve_plot(sync, paths.plots / "syncnet_offsets.png", title)
    log.info(
        "%s: SyncNet held-out pair accuracy %.3f, accuracy %.3f (loss %.3f -> %.3f), "
        "best offset %+d, best epoch %d -> %s",
        name,
        result.metrics["val_pair_accuracy"],
        result.metrics["val_accuracy"],
        result.history.val[0]["val_loss"],
        result.metrics["val_loss"],
        sync.best_offset,
        result.history.best_epoch,
        paths.syncnet,
    )


if __name__ == "__main__":
    run_stage("syncnet", __doc__, syncnet)
