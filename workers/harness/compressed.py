"""Settings that compress execq's waits to seconds for the harness's runs (demo, chaos).

Their processes see time compressed everywhere (aged after seconds, sweeps every
second or two); a retry that waited as long as in production would outlast the
run's own deadlines.
"""

from __future__ import annotations

# Retries within one call back off in fractions of a second: a rate-limited create
# waits 0.5-2 s, a transient or unknown one 0.2-1 s (the defaults: 2-60 s, 1-10 s, 0.5-5 s).
FAST_RETRY_ENV = {
    "EXECQ_RETRY__RATE_LIMITED__BASE_S": "0.5",
    "EXECQ_RETRY__RATE_LIMITED__CAP_S": "2",
    "EXECQ_RETRY__TRANSIENT__BASE_S": "0.2",
    "EXECQ_RETRY__TRANSIENT__CAP_S": "1",
    "EXECQ_RETRY__UNKNOWN__BASE_S": "0.2",
    "EXECQ_RETRY__UNKNOWN__CAP_S": "1",
}
