"""What goes wrong between ranks: a user's impossible launch, or a peer that stopped."""

from __future__ import annotations

import re

import torch.distributed as dist

from contsup.errors import ContsupError

__all__ = ["DistributedError", "RankLost", "lost", "only_peer"]


class DistributedError(ContsupError):
    """A pipeline or launch that cannot work as asked (P > K, world size not divisible by P)."""


class RankLost(RuntimeError):
    """A peer rank stopped (killed, crashed or unreachable) while this one waited for it."""


def lost(peer: int | None, error: Exception) -> RankLost:
    """The ``RankLost`` to raise for ``error``, a collective or p2p call that failed
    because ``peer`` (None: some rank of a collective) stopped.

    Example::

        try:
            dist.recv(tensor, src=previous)
        except RuntimeError as error:
            raise lost(previous, error) from None   # "rank 0 stopped, so rank 1 cannot go on"

    The backend's message is cut to its first sentence: users need who stopped, not
    gloo's source location.
    """
    me = dist.get_rank()
    # gloo: "[.../pair.cc:545] Read error [127.0.0.1]:61083: Connection reset by peer. ..."
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    reason = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0]
    who = f"rank {peer}" if peer is not None else "another rank"
    return RankLost(f"{who} stopped, so rank {me} cannot go on ({reason})")


def only_peer(group=None) -> int | None:
    """The one other rank of a two-rank ``group`` (None: the world), the only peer a
    failed collective can name; None in a larger group, where gloo's error gives an
    address, not a rank.

    Example::

        try:
            dist.barrier()
        except RuntimeError as error:
            raise lost(only_peer(), error) from None   # "rank 1 stopped, so rank 0 ..."
    """
    ranks = dist.get_process_group_ranks(group or dist.group.WORLD)
    others = [rank for rank in ranks if rank != dist.get_rank()]
    return others[0] if len(others) == 1 else None
