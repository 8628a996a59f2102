#!/usr/bin/env bash
# kiln beside BuildKit and buildah in one run, on the anchors' fixtures (issue 14).
#
# For each fixture and builder it runs `../shared/anchors/anchors.sh BUILDER FIXTURE LABEL`
# (cold, push, no-op, edit, touch, push after the edit, and for `app` the app2 build and
# its push; store size), then reads the rows it produced back from the anchors'
# results.tsv (selected by this run's timestamped LABEL) and prints one table per fixture:
# seconds per step x builder, kiln/BuildKit and kiln/buildah ratios, and the goals of
# issue 14 with met/missed. Medians when RUNS > 1.
#
# Fixtures: the anchors' `bigcopy`, `multistage`, `app`, and `copy`: kiln's own COPY
# fixture (bench/copy.sh's context: bigcopy's generator with three 341 MiB large files,
# ~1 GiB). Its steps are folded in here rather than running copy.sh: anchors.sh's bigcopy
# sequence runs on that context (its own ANCHOR_WORK with the bigger generated files), so
# the copy fixture gets the same steps (push and store size too) and the same builders'
# commands. One difference from copy.sh: the Dockerfile is bigcopy's (`FROM busybox`, a
# 1 MiB base) instead of `FROM scratch`.
#
# Goals checked (kiln/BuildKit): edit <= 0.2, cold <= 0.3, push after the edit <= 0.2 on
# the COPY fixtures (bigcopy, copy); multistage cold <= 0.75; store size (du at the end)
# <= buildah's on every fixture.
#
# usage: bench/anchors.sh
# env:   FIXTURES="bigcopy multistage app copy"   (space or comma separated)
#        BUILDERS="kiln docker-buildkit buildah"
#        RUNS=1          runs per builder x fixture (the table shows medians)
#        KILN=path       kiln binary (default: cargo build --release -p kiln-builder of this
#                        checkout, target/release/kiln under CARGO_TARGET_DIR or ./target)
#        WAIT_IDLE=SECS  passed to anchors.sh: wait for idle CPUs before each sequence
#        ANCHORS=dir     the anchors' harness (default ../shared/anchors beside the repo)
#        COPY_WORK=dir   scratch of the copy fixture (default /var/tmp/kiln-bench-anchors-copy)
#        RESULTS=file    results file (default: the anchors' results/results.tsv)
#        LABEL=text      label of this run's rows (default kb-<UTC timestamp>); with
#                        REPORT_ONLY=1 only the tables of an earlier LABEL are printed
# Needs root, the tools .ci/install.sh installs (buildah, docker.io, docker-registry,
# skopeo, mmdebstrap, python3), and the anchors' registry (started here, bases built if
# missing). Not a test: it asserts no timing, but exits non-zero when a builder step failed.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ANCHORS=${ANCHORS:-$REPO/../shared/anchors}
ANCHORS=$(cd "$ANCHORS" 2>/dev/null && pwd) || { echo "error: anchors harness not found (set ANCHORS=)" >&2; exit 2; }
RESULTS=${RESULTS:-$ANCHORS/results/results.tsv}
export RESULTS
FIXTURES=${FIXTURES:-bigcopy multistage app copy}
BUILDERS=${BUILDERS:-kiln docker-buildkit buildah}
FIXTURES=${FIXTURES//,/ }
BUILDERS=${BUILDERS//,/ }
RUNS=${RUNS:-1}
COPY_WORK=${COPY_WORK:-/var/tmp/kiln-bench-anchors-copy}
COPY_BIG_MB=341
LABEL=${LABEL:-kb-$(date -u +%Y%m%dT%H%M%SZ)}
T0=$(date +%s)

report() {
  /usr/bin/python3 - "$RESULTS" "$LABEL" "$FIXTURES" "$BUILDERS" <<'PY'
import sys, statistics
results, label, fixtures, builders = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
# rows of this run: run label = LABEL:FIXTURE:rN (FIXTURE as named here: copy is anchors' bigcopy);
# a sequence run again under the same LABEL (e.g. BUILDERS=buildah after a fix) replaces its rows
runs = {}
for line in open(results):
    f = line.rstrip("\n").split("\t")
    if len(f) < 6 or not f[3].startswith(label + ":"):
        continue
    _, b, _, run, m, v = f[:6]
    if m == "du_pruned":  # first row of a sequence: forget an earlier sequence of the same run
        runs.pop((b, run), None)
    runs.setdefault((b, run), {})[m] = (v, f[6] if len(f) > 6 else "?")
vals, failed = {}, []
for (b, run), ms in runs.items():
    _, fx, r = run.rsplit(":", 2)
    for m, (v, rc) in ms.items():
        if v.startswith("FAIL"):
            failed.append(f"{b} {fx} {r} {m}: {v} (exit {rc})")
        vals.setdefault((fx, b, m), []).append(v)

def med(fx, b, m):
    v = vals.get((fx, b, m))
    if not v:
        return None
    # a failed build leaves nothing to weigh: its store size is no figure either
    if any(x.startswith("FAIL") for x in v + (vals.get((fx, b, "cold"), []) if m.startswith("du") else [])):
        return "FAIL"
    return statistics.median(float(x) for x in v)

steps = ["cold", "push", "noop", "edit", "touch", "push_incr", "app2", "push_app2", "du_end"]
names = {"cold": "cold", "push": "push", "noop": "no-op", "edit": "edit", "touch": "touch",
         "push_incr": "push after edit", "app2": "app2", "push_app2": "push app2", "du_end": "du_end MiB"}
short = {"kiln": "kiln", "docker-buildkit": "BuildKit", "buildah": "buildah"}
others = [b for b in ("docker-buildkit", "buildah") if b in builders and "kiln" in builders]
goals = []  # (fixture, text, ratio, limit)
def fmt(x, unit=""):
    if x is None: return "-"
    if x == "FAIL": return "FAIL"
    return f"{x:.0f}" if unit == "MiB" else f"{x:.2f}"
def ratio(a, b):
    if a is None or b is None or "FAIL" in (a, b) or b == 0: return None
    return a / b
for fx in fixtures:
    runs = max((len(v) for (f, _, m), v in vals.items() if f == fx and m == "cold"), default=0)
    print(f"\n## {fx}  ({runs} run{'s' if runs != 1 else ''}{', medians' if runs > 1 else ''}; seconds, du_end in MiB)")
    hdr = f"{'step':<16}" + "".join(f"{short.get(b, b):>11}" for b in builders) + \
          "".join(f"{'kiln/' + short[o]:>15}" for o in others)
    print(hdr); print("-" * len(hdr))
    for s in steps:
        row = {b: med(fx, b, s) for b in builders}
        if all(v is None for v in row.values()):
            continue
        unit = "MiB" if s.startswith("du") else ""
        line = f"{names[s]:<16}" + "".join(f"{fmt(row[b], unit):>11}" for b in builders)
        for o in others:
            r = ratio(row.get("kiln"), row[o])
            line += f"{'-' if r is None else f'{r:.2f}':>15}"
        print(line)
    loads = []
    for b in builders:
        a, z = med(fx, b, "load1_start"), med(fx, b, "load1_end")
        if a is not None:
            loads.append(f"{short.get(b, b)} {fmt(a)}->{fmt(z)}")
    if loads:
        print("load1 (start->end): " + ", ".join(loads))
    k = lambda s: med(fx, "kiln", s)
    if "docker-buildkit" in others:
        bk = lambda s: med(fx, "docker-buildkit", s)
        if fx in ("bigcopy", "copy"):
            goals.append((fx, "edit kiln/BuildKit", ratio(k("edit"), bk("edit")), 0.2))
            goals.append((fx, "cold kiln/BuildKit", ratio(k("cold"), bk("cold")), 0.3))
            goals.append((fx, "push after edit kiln/BuildKit", ratio(k("push_incr"), bk("push_incr")), 0.2))
        if fx == "multistage":
            goals.append((fx, "cold kiln/BuildKit", ratio(k("cold"), bk("cold")), 0.75))
    if "buildah" in others:
        goals.append((fx, "store size kiln/buildah", ratio(k("du_end"), med(fx, "buildah", "du_end")), 1.0))
if goals:
    print("\n## goals of issue 14")
    for fx, what, r, lim in goals:
        state = "n/a (no figure)" if r is None else ("met" if r <= lim else "missed")
        print(f"{fx:<11} {what:<30} {'-' if r is None else f'{r:.3f}':>7}  <= {lim:<5} {state}")
if failed:
    print("\nFAILED steps (logs under the anchors' ANCHOR_WORK/logs):")
    for f in failed: print("  " + f)
missing = [f"{b} {fx}" for fx in fixtures for b in builders if (fx, b, "cold") not in vals]
if missing:
    print("\nno figures for: " + ", ".join(missing))
sys.exit(1 if failed or missing else 0)
PY
}

if [ -n "${REPORT_ONLY:-}" ]; then report; exit $?; fi
[ "$(id -u)" = 0 ] || { echo "error: needs root (builders' storage, registry, dockerd)" >&2; exit 2; }

# Tools (.ci/install.sh installs them): say everything that is missing at once.
missing=()
for b in $BUILDERS; do
  case $b in
    buildah) command -v buildah >/dev/null || missing+=("buildah (apt-get install buildah)") ;;
    docker-buildkit) { [ -x /usr/bin/docker ] && command -v dockerd >/dev/null; } || missing+=("/usr/bin/docker, dockerd (apt-get install docker.io)") ;;
    kiln) ;;
    *) echo "error: unknown builder $b (kiln, docker-buildkit, buildah)" >&2; exit 2 ;;
  esac
done
for t in docker-registry:docker-registry skopeo:skopeo mmdebstrap:mmdebstrap python3:python3 openssl:openssl curl:curl; do
  command -v "${t%%:*}" >/dev/null || missing+=("${t%%:*} (apt-get install ${t#*:})")
done
if [ ${#missing[@]} -gt 0 ]; then
  printf 'error: missing tools (.ci/install.sh installs them):\n' >&2; printf '  %s\n' "${missing[@]}" >&2; exit 2
fi
for fx in $FIXTURES; do
  case $fx in bigcopy|multistage|app|copy) ;; *) echo "error: unknown fixture $fx (bigcopy, multistage, app, copy)" >&2; exit 2 ;; esac
done

if [[ " $BUILDERS " == *" kiln "* ]]; then
  if [ -z "${KILN:-}" ]; then
    echo "building kiln (cargo build --release -p kiln-builder)" >&2
    (cd "$REPO" && cargo build --release -q -p kiln-builder) || { echo "error: cargo build failed" >&2; exit 2; }
    KILN=${CARGO_TARGET_DIR:-$REPO/target}/release/kiln
    KILN_COMMIT="release build of $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)$(cd "$REPO" && git diff --quiet HEAD 2>/dev/null || echo "+dirty")"
  fi
  [ -x "$KILN" ] || { echo "error: kiln binary not found: $KILN" >&2; exit 2; }
  export KILN
fi

# buildah pulls the bases over plain HTTP: the anchors' setup.sh writes this file (with
# system-wide containers.conf settings this script leaves alone); write it if missing.
if [[ " $BUILDERS " == *" buildah "* ]] && ! grep -qs '127.0.0.1:5000' /etc/containers/registries.conf.d/*.conf; then
  echo "writing /etc/containers/registries.conf.d/50-anchor-local.conf (insecure 127.0.0.1:5000, as the anchors' setup.sh)" >&2
  mkdir -p /etc/containers/registries.conf.d
  printf '# local anchor-benchmark registry (docker-registry on loopback, plain HTTP)\n[[registry]]\nlocation = "127.0.0.1:5000"\ninsecure = true\n' \
    > /etc/containers/registries.conf.d/50-anchor-local.conf
fi
"$ANCHORS/registry.sh" start >&2 || exit 2
"$ANCHORS/make-bases.sh" >&2 || { echo "error: make-bases.sh failed" >&2; exit 2; }
if [[ " $BUILDERS " == *" docker-buildkit "* ]]; then
  "$ANCHORS/dockerd.sh" start >&2 || exit 2
fi

# The copy fixture: bigcopy's generator with the large files of bench/copy.sh, in its own
# scratch dir (anchors.sh generates $ANCHOR_WORK/gen/bigcopy unless it is complete).
prep_copy() {
  local gen=$COPY_WORK/gen/bigcopy
  [ -f "$gen/.complete" ] && [ -f "$gen/.big-$COPY_BIG_MB" ] && return 0
  rm -rf "$gen"; mkdir -p "$gen"
  echo "generating the copy fixture's context (~1 GiB) in $gen" >&2
  BIG_MB=$COPY_BIG_MB bash "$ANCHORS/fixtures/bigcopy/gen.sh" "$gen" || return 1
  touch "$gen/.big-$COPY_BIG_MB" "$gen/.complete"
}

echo "label $LABEL; kiln ${KILN:-(not run)} ${KILN_COMMIT:+($KILN_COMMIT)}; results in $RESULTS" >&2
for fx in $FIXTURES; do
  for ((r = 1; r <= RUNS; r++)); do
    for b in $BUILDERS; do
      if [ "$fx" = copy ]; then
        prep_copy || { echo "error: generating the copy fixture failed" >&2; exit 2; }
        ANCHOR_WORK=$COPY_WORK "$ANCHORS/anchors.sh" "$b" bigcopy "$LABEL:$fx:r$r" >&2
        rm -rf "$COPY_WORK/ctx"   # 1 GiB per builder; the generated context stays for the next run
      else
        "$ANCHORS/anchors.sh" "$b" "$fx" "$LABEL:$fx:r$r" >&2
      fi
    done
  done
done

T1=$(date +%s)
echo
echo "# bench/anchors.sh $LABEL: kiln ${KILN:-(not run)}${KILN_COMMIT:+ ($KILN_COMMIT)}, $(date -u +%F), whole run $(( (T1 - T0) / 60 )) min $(( (T1 - T0) % 60 )) s, load average now $(cut -d' ' -f1-3 /proc/loadavg)"
report
