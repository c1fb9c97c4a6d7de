#!/usr/bin/env bash
# Prints how long each phase of a run took, from the phase log that scripts/common.sh's `step`
# writes when OPENLEDGER_PHASE_LOG is set:
#
#   OPENLEDGER_PHASE_LOG=/tmp/phases scripts/test.sh; scripts/ci-times.sh /tmp/phases
#
# A phase lasts until the next one starts; the last one until this script runs (or until END, a
# Unix time, when given). `.ci/run` prints this table at its end, so the dependency or test that
# adds minutes is seen the day it arrives.
set -euo pipefail
log="${1:?usage: ci-times.sh PHASE_LOG [END]}"
end="${2:-$(date +%s)}"
[ -s "$log" ] || { echo "ci-times: no phases recorded in $log" >&2; exit 1; }
awk -F'\t' -v end="$end" '
	{ start[NR] = $1; name[NR] = $2 }
	END {
		printf "\n%8s  %7s  %s\n", "seconds", "min:s", "phase"
		for (i = 1; i <= NR; i++) {
			stop = (i < NR) ? start[i + 1] : end
			d = stop - start[i]
			printf "%8d  %4d:%02d  %s\n", d, d / 60, d % 60, name[i]
		}
		d = end - start[1]
		printf "%8d  %4d:%02d  %s\n", d, d / 60, d % 60, "total"
	}' "$log"
