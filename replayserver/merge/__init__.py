"""From writer streams to one replay, pure and clock-driven: buffers, the delay, the quorum merge.

Nothing here touches the network or the disk: it is fed bytes and a clock
(docs/merge-and-delay.md).
"""
