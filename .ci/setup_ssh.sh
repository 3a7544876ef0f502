#!/bin/bash
# sshd for root on 127.0.0.1:$MINIPAR_SSH_PORT (default 2222), key-only, every file under
# $MINIPAR_CI_DIR/ssh. Tests use `ssh -F $MINIPAR_CI_DIR/ssh/ssh_config 127.0.0.1`. Idempotent.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
D=$MINIPAR_CI_DIR/ssh; PORT=${MINIPAR_SSH_PORT:-2222}
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || apt_install openssh-server openssh-client
mkdir -p "$D" /run/sshd             # /run/sshd: the privilege-separation dir sshd insists on
chmod 700 "$D"
[ -f "$D/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$D/host_ed25519"
[ -f "$D/id_ed25519" ]   || ssh-keygen -q -t ed25519 -N '' -f "$D/id_ed25519"
cp "$D/id_ed25519.pub" "$D/authorized_keys"
# UsePAM/StrictModes no: the keys live in /tmp. Subsystem sftp: OpenSSH 9's scp needs it.
# AcceptEnv: the launcher's "env" mode passes the connection file in MINIPAR_CONNECTION_INFO.
cat > "$D/sshd_config" <<CONF
Port $PORT
ListenAddress 127.0.0.1
HostKey $D/host_ed25519
PidFile $D/sshd.pid
AuthorizedKeysFile $D/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AcceptEnv MINIPAR_*
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
LogLevel ERROR
CONF
cat > "$D/ssh_config" <<CONF
Host *
  User root
  Port $PORT
  IdentityFile $D/id_ed25519
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  BatchMode yes
  LogLevel ERROR
  ConnectTimeout 5
CONF
/usr/sbin/sshd -t -f "$D/sshd_config"
alive "$D/sshd.pid" || /usr/sbin/sshd -f "$D/sshd_config" -E "$D/sshd.log"
for _ in $(seq 50); do ssh -F "$D/ssh_config" 127.0.0.1 true </dev/null 2>/dev/null && break; sleep 0.2; done
ssh -F "$D/ssh_config" 127.0.0.1 true </dev/null
echo "sshd ready: ssh -F $D/ssh_config 127.0.0.1"
