"""Pure decisions: no I/O here, so every rule is tested without services.

Modules: ``order_state`` (the order lifecycle table), ``retry`` (retry classes
and ccxt error mapping), ``client_ids`` (deterministic client order ids),
``aged`` (aged-position policy), ``chunks`` (partial-close plans),
``verification`` (verdicts from the sources' answers).
"""
