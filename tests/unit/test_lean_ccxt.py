"""A worker process loads only the ccxt exchanges it uses (issue 4: memory per worker)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import json, sys
import workers  # installs the lean ccxt package first thing
import ccxt
from ccxt.base import errors
from workers.exchange.lean_ccxt import exchange_class

report = {"binanceusdm": exchange_class("binanceusdm").__name__}
report["errors_are_ccxts"] = ccxt.NetworkError is errors.NetworkError
report["exchange_base"] = ccxt.Exchange.__name__
report["class_attribute"] = ccxt.binanceusdm is exchange_class("binanceusdm")
report["kraken_loaded_before"] = "ccxt.kraken" in sys.modules
report["exchanges"] = len(ccxt.exchanges)  # not loaded: the whole package loads on demand
report["kraken_loaded_after"] = "ccxt.kraken" in sys.modules
report["same_class_after"] = ccxt.binanceusdm is exchange_class("binanceusdm")
print(json.dumps(report))
"""


def test_workers_load_only_the_exchanges_they_use_and_the_rest_on_demand() -> None:
    output = subprocess.run(
        [sys.executable, "-c", PROBE], check=True, capture_output=True, text=True
    ).stdout
    report = json.loads(output.strip().splitlines()[-1])
    assert report["binanceusdm"] == "binanceusdm"
    assert report["errors_are_ccxts"] and report["exchange_base"] == "Exchange"
    assert report["class_attribute"]
    assert report["kraken_loaded_before"] is False
    assert report["exchanges"] > 50 and report["kraken_loaded_after"] is True
    assert report["same_class_after"]
