#!/bin/bash
# Single-node Son of Grid Engine 8.1.9 (Debian) for root. It keeps its state in
# /var/lib/gridengine and /var/spool/gridengine (its packaging decides). Idempotent.
# Tests need: SGE_ROOT=/var/lib/gridengine SGE_CELL=default (the commands find them alone too).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
H=$(hostname)
getent hosts "$H" >/dev/null || echo "127.0.0.1 $H" >> /etc/hosts   # SGE needs the hostname to resolve
if ! command -v sge_qmaster >/dev/null && [ ! -x /usr/sbin/sge_qmaster ]; then
  # preseeded, or act_qmaster is left empty
  printf '%s\n' "gridengine-common shared/gridenginemaster string $H" \
                "gridengine-common shared/gridenginecell string default" \
                "gridengine-common shared/gridengineconfig boolean true" | debconf-set-selections
  apt_install gridengine-master gridengine-exec gridengine-client
fi
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
C=$SGE_ROOT/$SGE_CELL/common
# the postinst initialises the spool only on a first install
if [ ! -d /var/spool/gridengine/spooldb ] || [ -z "$(ls -A /var/spool/gridengine/spooldb)" ]; then
  for d in qmaster qmaster/job_scripts spooldb execd; do
    mkdir -p /var/spool/gridengine/$d; chown sgeadmin:sgeadmin /var/spool/gridengine/$d
  done
  su -s /bin/sh -c "/usr/share/gridengine/scripts/init_cluster $SGE_ROOT $SGE_CELL /var/spool/gridengine/spooldb sgeadmin" sgeadmin
fi
echo "$H" > $C/act_qmaster
echo "$H localhost" > $C/host_aliases        # 127.0.0.1 reverse-resolves to "localhost"
ED=$(mktemp -d)
qconf -sh >/dev/null 2>&1 || /usr/sbin/sge_qmaster
for _ in $(seq 100); do qconf -sh >/dev/null 2>&1 && break; sleep 0.2; done
# root may run jobs
printf '#!/bin/sh\nsed -i -e "s/^min_uid .*/min_uid 0/" -e "s/^min_gid .*/min_gid 0/" "$1"\n' > $ED/conf; chmod +x $ED/conf
EDITOR=$ED/conf qconf -mconf >/dev/null
# schedule every second (default 15 s makes a job take 25-30 s), no load adjustments
printf '#!/bin/sh\nsed -i -e "s/^schedule_interval .*/schedule_interval 0:0:1/" -e "s/^flush_submit_sec .*/flush_submit_sec 1/" -e "s/^flush_finish_sec .*/flush_finish_sec 1/" -e "s/^job_load_adjustments .*/job_load_adjustments NONE/" -e "s/^load_adjustment_decay_time .*/load_adjustment_decay_time 0:0:0/" "$1"\n' > $ED/sched; chmod +x $ED/sched
EDITOR=$ED/sched qconf -msconf >/dev/null
qconf -ss 2>/dev/null | grep -qx "$H" || qconf -as "$H" >/dev/null
if ! qconf -se "$H" >/dev/null 2>&1; then
  printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' "$H" > $ED/exechost
  qconf -Ae $ED/exechost >/dev/null
fi
# 16 slots: engines mostly sleep in poll. terminate_method SIGTERM: qdel otherwise sends SIGKILL
printf '#!/bin/sh\nsed -i -e "s/^qname .*/qname all.q/" -e "s/^hostlist .*/hostlist %s/" -e "s/^slots .*/slots 16/" -e "s/^pe_list .*/pe_list NONE/" -e "s/^load_thresholds .*/load_thresholds NONE/" -e "s/^terminate_method .*/terminate_method SIGTERM/" "$1"\n' "$H" > $ED/queue; chmod +x $ED/queue
if qconf -sq all.q >/dev/null 2>&1; then EDITOR=$ED/queue qconf -mq all.q >/dev/null; else EDITOR=$ED/queue qconf -aq >/dev/null; fi
rm -rf "$ED"
running=0   # the execd spool dir is named after SGE's resolved name ("localhost"), so glob
for f in /var/spool/gridengine/execd/*/execd.pid; do [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && running=1; done
install -d -o sgeadmin -g sgeadmin /var/spool/gridengine/execd
[ $running = 1 ] || /usr/sbin/sge_execd
timeout 120 qsub -sync y -b y -o /dev/null -e /dev/null true >/dev/null   # ready when a job runs
echo "SGE ready: export SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL"
