"""The flows a worker runs: load state, call the decisions in ``workers.execution``,
talk to the exchange, record what happened.

- ``submission``: exactly-once submission of one order (every path sends through it);
- ``verification``: multi-source position verification and the flat-after-close check;
- ``aged``: the aged-phase sweep, the aged close and its chunk fallback;
- ``recovery``: the recovery sweep (orders in doubt, lost signals, positions);
- ``liquidation``: emergency liquidation of every position.
"""
