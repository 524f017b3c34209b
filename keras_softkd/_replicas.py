"""Running a state update once for all replicas (the one tf.distribute-specific piece).

Inside a ``train_step`` under ``tf.distribute`` every replica runs the step;
an update of shared state (MrKD's copies and step counter) must run once, in
cross-replica context, so that it writes every replica's copy of the
variables with the same values. ``merge_call`` does that, but only outside
control flow, hence this helper is called at the top level of the step and
the ``cond`` lives inside ``update``. On other backends, and on one device,
it just calls ``update``.
"""

from __future__ import annotations

from typing import Callable

import keras


def run_once_across_replicas(update: Callable[[], None]) -> None:
    if keras.backend.backend() != "tensorflow":
        update()
        return
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None:  # already in cross-replica context
        update()
    else:
        context.merge_call(lambda strategy: update())
