# The RAM flasher's story (docs/flasher.md), sourced by /init; busybox ash.
#
#   job      the host partition read-only: a root-only job naming this boot's nonce, or nothing is done
#   network  DHCP on the first network card, or the machine's static address from the job
#   memory   enough RAM for the payload, checked before anything is downloaded
#   fetch    the compressed image into RAM (tmpfs)
#   verify   size, SHA-256 of the payload, every frame decoded and hashed, the whole image decoded and hashed
#   write    the target, from the copy in RAM; read back and hashed; retried from RAM on failure
#   table    whole-disk jobs only: the kernel re-reads the new partition table, which must hold the host UUID
#
# Until `write` starts, the target has not been written by anything here (the host partition is mounted
# read-only, without journal replay): every failure reboots, and GRUB, whose one-shot this boot consumed,
# boots the old system. Once `write` started, a reboot could land on a half-written disk, so a failure
# retries from RAM and, when it cannot, the flasher stays up and says so on the console.

FLASHER_DIR=${FLASHER_DIR:-/run/upgradectl-flasher}
STATUS=$FLASHER_DIR/status
LOG=$FLASHER_DIR/log
PAYLOAD=/ram/payload.lz4
HOST_MNT=${HOST_MNT:-/host}
JOB_REL=boot/upgradectl/flasher/job
JOB_MAGIC='upgradectl-flash-job 1'
# Rescue mode (upgradectl.rescue=1, GRUB's fallback when no image could be loaded): put the image of
# the rescue job's release back into /images instead of writing the partition (docs/flasher.md, "Rescue").
RESCUE_JOB_REL=boot/upgradectl/flasher/rescue-job
RESCUE_JOB_MAGIC='upgradectl-rescue-job 1'
RESCUE_RETRY_SECONDS=${RESCUE_RETRY_SECONDS:-300}
# SSH into the flasher (`upgradectl flasher add-key`): the operator's keys, root-written like the job.
KEYS_REL=boot/upgradectl/flasher/authorized_keys
SSH_PORT=${SSH_PORT:-22}
JOB_KIND=${JOB_KIND:-flash}
WRITE_ATTEMPTS=${WRITE_ATTEMPTS:-3}
writing=0

say() {
  echo "upgradectl-flasher: $*"
  [ -d "$FLASHER_DIR" ] && echo "$(cut -d' ' -f1 /proc/uptime 2>/dev/null) $*" >> "$LOG"
  return 0
}

# The status file: the phase and its last message, rewritten at every step (RAM; copied onto the new
# host partition after a successful flash).
status() {
  [ -d "$FLASHER_DIR" ] || return 0
  printf 'phase=%s\nmessage=%s\nversion=%s\n' "$1" "$2" "${job_version:-}" > "$STATUS.tmp" && mv "$STATUS.tmp" "$STATUS"
  say "[$1] $2"
}

# Before writing: nothing was written, so the old system is intact; GRUB already cleared the one-shot.
# In rescue mode there is no old system to go back to (GRUB could load no image): a reboot would come
# straight back here, so the attempt ends and rescue_main waits and tries again. In hold mode too: the
# step (the network) ends, the flasher stays up.
fail_before_write() {
  if [ "$JOB_KIND" != flash ]; then
    status failed "$*"
    umount "$HOST_MNT" 2>/dev/null
    exit 1
  fi
  status failed "$* — nothing was written; rebooting into the old system"
  umount "$HOST_MNT" 2>/dev/null
  sync
  sleep 2
  reboot -f
  sleep 30
}

# After writing started and no retry is left (or the story broke): never reboot a half-written disk.
flasher_stuck() {
  if [ "$writing" = 0 ]; then fail_before_write "$*"; fi
  if [ -n "${retry_mode:-}" ]; then status stuck "$*"; exit 1; fi
  stay_up stuck "$* — the target is half-written and will not boot; the flasher stays up. The verified image is still in $PAYLOAD: on this console run 'sh /lib/upgradectl/flasher.sh retry' or power-cycle only once the target is rewritten" \
    "STUCK: $* (target ${target_dev:-?} half-written; see $STATUS; a shell is on the console)"
}

# Never returns, never reboots: PHASE and MESSAGE in the status file, a shell on the console, LINE on the
# console every SECONDS (default 60).
stay_up() {
  status "$1" "$2"
  setsid sh -c 'exec sh </dev/console >/dev/console 2>&1' &
  while :; do
    say "$3"
    sleep "${4:-60}"
  done
}

# SHA-256 of the file $1, or of stdin, as 64 hex digits: openssl when the initrd has it (the CPU's SHA
# extensions: ~8x busybox's plain C, and a flash hashes the image three times), else busybox.
sha256() {
  if [ -x /bin/openssl ]; then openssl dgst -sha256 -r "$@" | cut -d' ' -f1; else sha256sum "$@" | cut -d' ' -f1; fi
}

# A decimal number of at most 15 digits (safe in ash arithmetic).
is_uint() { case "$1" in ''|*[!0-9]*) return 1;; esac; [ ${#1} -le 15 ]; }
is_hex() { case "$2" in *[!0-9a-f]*) return 1;; esac; [ ${#2} -eq "$1" ]; }

# check_job FILE NONCE HOSTUUID: the job is ours, for this boot, and well-formed; sets job_* variables
# and writes the frame list to $FLASHER_DIR/frames. Prints why and fails otherwise.
check_job() {
  file=$1 nonce=$2 uuid=$3 magic=$JOB_MAGIC
  # A rescue job has no nonce: it is valid for any boot that reaches rescue (docs/flasher.md, "Rescue").
  [ "$JOB_KIND" = rescue ] && magic=$RESCUE_JOB_MAGIC
  [ -n "$nonce" ] || [ "$JOB_KIND" = rescue ] || { echo "no upgradectl.flasher nonce on the command line: GRUB passes one only on the one-shot boot right after a job was written"; return 1; }
  [ -e "$file" ] || { echo "no flash job at $file"; return 1; }
  [ -L "$file" ] && { echo "$file is a symbolic link"; return 1; }
  [ -f "$file" ] || { echo "$file is not a regular file"; return 1; }
  for f in "$file" "$(dirname "$file")"; do
    set -- $(stat -c '%u %a' "$f")
    [ "$1" = 0 ] || { echo "$f is owned by uid $1, not root: refused"; return 1; }
    [ $(( 0$2 & 022 )) -eq 0 ] || { echo "$f has mode $2: writable by group or others, refused"; return 1; }
  done
  job_nonce= job_version= job_url= job_payload_size= job_payload_sha256= job_image_size= job_image_sha256= job_target_uuid= job_target_disk= job_ram_reserve= job_frames=
  job_keep_size= job_keep_sha256=
  job_net=dhcp job_net_mac= job_net_addr= job_net_gw= job_net_dns=
  mkdir -p "$FLASHER_DIR"
  : > "$FLASHER_DIR/frames"
  first=1 n=0
  while read -r key a b c d rest; do
    if [ $first = 1 ]; then
      [ "$key $a" = "$magic" ] || { echo "$file is not a $JOB_KIND job ('$magic' expected)"; return 1; }
      first=0; continue
    fi
    case "$key" in
      nonce) [ "$JOB_KIND" = flash ] || { echo "a rescue job has no nonce"; return 1; }
             is_hex 32 "$a" || { echo "bad nonce"; return 1; }; job_nonce=$a ;;
      version) case "$a" in ''|*[!A-Za-z0-9._+~-]*) echo "bad version"; return 1;; esac; job_version=$a ;;
      url) case "$a" in http://*|https://*) ;; *) echo "url must be http(s)"; return 1;; esac
           case "$a" in *[!A-Za-z0-9._~:/?#@!\$\&\'\(\)\*+,\;=%-]*) echo "url has characters outside RFC 3986"; return 1;; esac
           job_url=$a ;;
      payload_size|image_size|ram_reserve|frames) is_uint "$a" || { echo "bad $key"; return 1; }; eval "job_$key=\$a" ;;
      payload_sha256|image_sha256) is_hex 64 "$a" || { echo "bad $key"; return 1; }; eval "job_$key=\$a" ;;
      target_uuid) case "$a" in ''|*[!0-9A-Fa-f-]*) echo "bad target_uuid"; return 1;; esac; job_target_uuid=$a ;;
      network) check_network "$a" "$b" "$c" "$d" "$rest" || return 1 ;;
      # A whole-disk release: the disk's kernel name (src/flasher/job.ts DISK_NAME_RE).
      target_disk) [ "$JOB_KIND" = flash ] || { echo "a rescue job never targets a disk"; return 1; }
                   case "$a" in [a-z]*) ;; *) echo "bad target_disk"; return 1;; esac
                   case "$a" in *[!a-z0-9]*) echo "bad target_disk"; return 1;; esac
                   [ ${#a} -le 32 ] || { echo "bad target_disk"; return 1; }; job_target_disk=$a ;;
      # What to keep: the machine's own files packed beside the job (src/operations/kept-files.ts).
      keep) [ "$JOB_KIND" = flash ] || { echo "a rescue job keeps nothing"; return 1; }
            { is_uint "$a" && is_hex 64 "$b"; } || { echo "bad keep line"; return 1; }
            job_keep_size=$a job_keep_sha256=$b ;;
      frame) { is_uint "$a" && is_uint "$b" && is_uint "$c" && is_hex 64 "$d"; } || { echo "bad frame line $((n + 1))"; return 1; }
             echo "$a $b $c $d" >> "$FLASHER_DIR/frames"; n=$((n + 1)) ;;
      '') ;;
      *) echo "unknown key '$key' in $file"; return 1 ;;
    esac
  done < "$file"
  [ $first = 0 ] || { echo "$file is empty"; return 1; }
  for v in version url payload_size payload_sha256 image_size image_sha256 target_uuid ram_reserve frames; do
    eval "[ -n \"\$job_$v\" ]" || { echo "$file has no $v"; return 1; }
  done
  if [ "$JOB_KIND" = flash ]; then
    [ -n "$job_nonce" ] || { echo "$file has no nonce"; return 1; }
    # The binding: a job written for another boot (an abandoned reflash, a copied file) names another nonce.
    [ "$job_nonce" = "$nonce" ] || { echo "the job is for another boot (nonce $job_nonce, this boot $nonce): stale, refused"; return 1; }
  fi
  [ "$n" = "$job_frames" ] || { echo "the job lists $n frames, it says $job_frames"; return 1; }
  # The only target this flasher writes is the partition it was booted from (docs/flasher.md).
  [ "$job_target_uuid" = "$uuid" ] || { echo "the job's target $job_target_uuid is not the host partition $uuid"; return 1; }
  return 0
}

is_ipv4() {
  case "$1" in ''|*[!0-9.]*|*..*|.*|*.) return 1;; esac
  old_ifs=$IFS; IFS=.; set -- $1; IFS=$old_ifs
  [ $# -eq 4 ] || return 1
  for o; do [ ${#o} -le 3 ] && [ "$o" -le 255 ] || return 1; done
}

# network dhcp | network static MAC|any ADDRESS/PREFIX GATEWAY|none DNS,DNS|none (src/flasher/job.ts).
check_network() {
  case "$1" in
    dhcp) [ -z "$2" ] || { echo "bad network line"; return 1; }; job_net=dhcp; return 0 ;;
    static) ;;
    *) echo "network must be dhcp or static"; return 1 ;;
  esac
  case "$2" in
    any) ;;
    [0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]) ;;
    *) echo "bad network MAC '$2'"; return 1 ;;
  esac
  prefix=${3#*/}
  { is_ipv4 "${3%/*}" && is_uint "$prefix" && [ "$prefix" -ge 1 ] && [ "$prefix" -le 32 ] && [ "$3" != "$prefix" ]; } || { echo "bad network address '$3'"; return 1; }
  [ "$4" = none ] || is_ipv4 "$4" || { echo "bad network gateway '$4'"; return 1; }
  if [ "$5" != none ]; then
    for d in $(echo "$5" | tr , ' '); do is_ipv4 "$d" || { echo "bad name server '$d'"; return 1; }; done
    case "$5" in ''|*' '*|,*|*,|*,,*) echo "bad name server list '$5'"; return 1;; esac
  fi
  job_net=static job_net_mac=$2 job_net_addr=$3 job_net_gw=$4 job_net_dns=$5
}

# The operator's keys from the host partition (read-only mounted) into root's account of this RAM OS.
# Taken only when root wrote them and nobody else can: they open a root shell on a machine mid-flash.
copy_ssh_keys() {
  keys=$HOST_MNT/$KEYS_REL
  [ -f "$keys" ] && [ ! -L "$keys" ] || return 0
  set -- $(stat -c '%u %a' "$keys")
  { [ "$1" = 0 ] && [ $(( 0$2 & 022 )) -eq 0 ]; } || { say "warning: $keys is owned by uid $1 with mode $2, not root-only: SSH stays off"; return 0; }
  mkdir -p /root/.ssh && chmod 700 /root /root/.ssh && cp "$keys" /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys
}

# dropbear once the network is up: password logins off (-s), host key made at first connection (-R:
# a RAM OS keeps nothing; its fingerprint changes at every flasher boot), log to the flasher's log.
start_ssh() {
  [ -s /root/.ssh/authorized_keys ] && [ -x /sbin/dropbear ] || return 0
  [ -f /run/dropbear.pid ] && return 0
  if /sbin/dropbear -R -s -E -P /run/dropbear.pid -p "$SSH_PORT" >> "$LOG" 2>&1; then
    status ssh "dropbear listens on port $SSH_PORT for the keys in $KEYS_REL (root, no passwords); the status is in $STATUS"
  else
    say "warning: dropbear did not start (see $LOG)"
  fi
}

cmdline_arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1="*) echo "${w#*=}"; return;; esac; done; }

setup_system() {
  # /init may have mounted it already, to read the command line.
  grep -q ' /proc proc ' /proc/mounts 2>/dev/null || mount -t proc proc /proc
  mount -t sysfs sysfs /sys
  mount -t devtmpfs devtmpfs /dev
  mount -t tmpfs -o mode=0755,size=16m tmpfs /run
  mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
  mkdir -p "$FLASHER_DIR"
  # Modules in dependency order (written when the initrd was built from the kernel's modules.dep).
  while read -r ko; do
    insmod "/lib/modules/$ko" 2>/dev/null || grep -q "^$(basename "$ko" .ko | tr - _) " /proc/modules || say "warning: insmod $ko failed"
  done < /lib/modules/load-order
}

# Wait up to $2 seconds for `$1` (a command) to succeed: devices appear asynchronously after insmod.
wait_for() { i=0; while ! eval "$1" >/dev/null 2>&1; do i=$((i + 1)); [ $i -gt $(($2 * 5)) ] && return 1; usleep 200000; done; }

read_job() {
  host_uuid=$(cmdline_arg upgradectl.host)
  nonce=$(cmdline_arg upgradectl.flasher)
  [ -n "$host_uuid" ] || fail_before_write "no upgradectl.host=UUID on the command line"
  wait_for "findfs UUID=$host_uuid" 15 || fail_before_write "no partition with UUID $host_uuid"
  host_dev=$(findfs "UUID=$host_uuid")
  mkdir -p "$HOST_MNT"
  # Read-only and without journal replay: before `write`, the flasher writes nothing to the disk at
  # all. reflash checkpointed the journal after writing the job, so the job is in place.
  mount -t ext4 -o ro,noload "$host_dev" "$HOST_MNT" || fail_before_write "cannot mount the host partition $host_dev"
  copy_ssh_keys
  job_rel=$JOB_REL
  [ "$JOB_KIND" = rescue ] && job_rel=$RESCUE_JOB_REL
  check_job "$HOST_MNT/$job_rel" "$nonce" "$host_uuid" > "$FLASHER_DIR/refused" || fail_before_write "$JOB_KIND job refused: $(cat "$FLASHER_DIR/refused")"
  umount "$HOST_MNT"
  target_dev=$host_dev
  [ -n "$job_target_disk" ] && disk_target
  # For `flasher.sh retry` from the console of a stuck flasher.
  set | grep -E '^(job_[a-z0-9_]+|target_dev)=' > "$FLASHER_DIR/job.env"
  status job "release $job_version: ${job_image_size} bytes onto $target_dev from $job_url (${job_payload_size} bytes to fetch)"
  size=$(blockdev --getsize64 "$target_dev") || fail_before_write "cannot read the size of $target_dev"
  [ "$job_image_size" -le "$size" ] || fail_before_write "the image ($job_image_size bytes) is larger than $target_dev ($size bytes)"
}

# The kernel name of the disk holding partition $1 (/sys/class/block/<partition>/..), or nothing when
# $1 is not a partition.
disk_of() {
  p=$(basename "$1")
  [ -f "/sys/class/block/$p/partition" ] || return 1
  basename "$(readlink -f "/sys/class/block/$p/..")"
}

# Whole-disk job: the disk is the one holding the partition this flasher booted from, found here again
# from that partition; the job's name for it (found the same way by commit --reflash) must agree.
disk_target() {
  disk=$(disk_of "$host_dev") || fail_before_write "the host partition $host_dev is not a partition of a disk: refusing a whole-disk job"
  [ "$disk" = "$job_target_disk" ] || fail_before_write "the job's disk $job_target_disk is not the disk holding the host partition $host_dev ($disk): refused"
  target_dev=/dev/$disk
}

network_up() {
  ip link set lo up
  wait_for 'ls /sys/class/net | grep -qv "^lo$"' 10 || fail_before_write "no network card (is its driver in the initrd?)"
  if [ "$job_net" = static ]; then
    network_static
    start_ssh
    return 0
  fi
  for ifc in $(ls /sys/class/net); do
    [ "$ifc" = lo ] && continue
    ip link set "$ifc" up
    if udhcpc -i "$ifc" -n -q -t 5 -T 2 -s /lib/upgradectl/udhcpc.script >> "$LOG" 2>&1; then
      status network "$ifc: $(ip -4 addr show dev "$ifc" | awk '/inet /{print $2}')"
      start_ssh
      return 0
    fi
  done
  fail_before_write "no DHCP lease on any network card"
}

# The machine's own static address (no DHCP on its network): on the card with its MAC, as the running
# system had it when the job was written.
network_static() {
  ifc=
  wait_for '[ -n "$(static_card)" ]' "${CARD_WAIT_SECONDS:-10}"
  ifc=$(static_card)
  [ -n "$ifc" ] || fail_before_write "no network card with MAC $job_net_mac for the static address $job_net_addr (is its driver in the initrd?)"
  ip link set "$ifc" up
  ip addr add "$job_net_addr" dev "$ifc" || fail_before_write "cannot set $job_net_addr on $ifc"
  [ "$job_net_gw" = none ] || ip route replace default via "$job_net_gw" dev "$ifc" || fail_before_write "cannot route through $job_net_gw on $ifc"
  : > /etc/resolv.conf
  [ "$job_net_dns" = none ] || for d in $(echo "$job_net_dns" | tr , ' '); do echo "nameserver $d" >> /etc/resolv.conf; done
  # Carrier comes a moment after link up; the fetch retries anyway.
  wait_for "grep -q 1 /sys/class/net/$ifc/carrier" "${CARRIER_WAIT_SECONDS:-5}" || say "warning: $ifc has no carrier yet"
  status network "$ifc: $job_net_addr static (gateway $job_net_gw, name servers $job_net_dns)"
}

static_card() {
  for c in $(ls /sys/class/net); do
    [ "$c" = lo ] && continue
    if [ "$job_net_mac" = any ] || [ "$(cat "/sys/class/net/$c/address" 2>/dev/null)" = "$job_net_mac" ]; then echo "$c"; return; fi
  done
}

# The payload lives in RAM until the write is verified: refuse before fetching when it cannot fit with
# room to spare for lz4, dd and the page cache of the target.
check_memory() {
  avail_kb=$(awk '/^MemAvailable:/{print $2}' /proc/meminfo)
  need=$((job_payload_size + job_ram_reserve))
  have=$((avail_kb * 1024))
  [ "$have" -ge "$need" ] || fail_before_write "not enough memory: $((have / 1048576)) MiB available, $((need / 1048576)) MiB needed (payload $((job_payload_size / 1048576)) MiB + $((job_ram_reserve / 1048576)) MiB reserve)"
  status memory "$((have / 1048576)) MiB available, $((need / 1048576)) MiB needed"
}

fetch_payload() {
  mkdir -p /ram
  mount -t tmpfs -o "size=$((job_payload_size + 1048576))" tmpfs /ram || fail_before_write "cannot mount a RAM disk for the payload"
  t0=$(cut -d. -f1 /proc/uptime)
  for try in 1 2 3; do
    rm -f "$PAYLOAD"
    status fetch "attempt $try: $job_url"
    wget -q -O "$PAYLOAD" "$job_url" 2>> "$LOG" && break
    [ $try = 3 ] && fail_before_write "download of $job_url failed 3 times (see $LOG)"
    sleep 2
  done
  status fetch "$(stat -c %s "$PAYLOAD") bytes in $(( $(cut -d. -f1 /proc/uptime) - t0 )) s"
}

# The frame whose decoded bytes differ from the manifest: named when the whole image does not match.
first_bad_frame() {
  i=0
  while read -r off len raw sha; do
    i=$((i + 1))
    set -- $(dd if="$PAYLOAD" bs=65536 iflag=skip_bytes,count_bytes skip="$off" count="$len" 2>/dev/null | lz4 -dc | sha256)
    [ "$1" = "$sha" ] || { echo "frame $i of $job_frames (offset $off) decodes to SHA-256 $1, not the manifest's $sha"; return; }
  done < "$FLASHER_DIR/frames"
  echo "every frame matches: the frames are not the whole payload"
}

verify_payload() {
  got=$(stat -c %s "$PAYLOAD")
  [ "$got" = "$job_payload_size" ] || fail_before_write "payload is $got bytes, the manifest says $job_payload_size"
  set -- $(sha256 "$PAYLOAD")
  [ "$1" = "$job_payload_sha256" ] || fail_before_write "payload SHA-256 $1 is not the manifest's $job_payload_sha256"
  # The whole image as it will be written, decoded once. Its SHA-256 matching the manifest's also
  # settles its size and every frame; only on a mismatch are the size and the frames looked at, to say
  # what differs. (Counting the bytes on the way through a FIFO and wc -c cost ~23 s for 96 MiB in QEMU.)
  set -- $(lz4 -dc "$PAYLOAD" | sha256)
  if [ "$1" != "$job_image_sha256" ]; then
    got=$(lz4 -dc "$PAYLOAD" | wc -c)
    fail_before_write "the decoded image (SHA-256 $1, $got bytes) is not the manifest's ($job_image_sha256, $job_image_size bytes): $(first_bad_frame)"
  fi
  status verify "image SHA-256 matches the manifest (and so its $job_image_size bytes and $job_frames frames), as do the payload's size and SHA-256: ready to write"
}

# Bytes [$1, $1 + $2) of the decoded image, one hex byte per line (from the verified payload in RAM).
image_bytes() { lz4 -dc "$PAYLOAD" 2>/dev/null | tail -c +$(($1 + 1)) | head -c "$2" | od -An -v -tx1 -w1 | tr -d ' '; }

# Little-endian numbers from one hex byte per line (image_bytes): b[] and le() for the awk programs below.
LE_AWK='function le(at, n,   v, i) { v = 0; for (i = n - 1; i >= 0; i--) v = v * 256 + b[at + i]; return v }
  { b[NR - 1] = (index(H, substr($0, 1, 1)) - 1) * 16 + index(H, substr($0, 2, 1)) - 1 }'

# The start sectors of the partitions in the image's table (MBR, or GPT behind a protective MBR), one a
# line; '?' when the GPT entries are too many to look at here, nothing without a boot signature. Only the
# bytes needed are decoded and dumped: busybox awk over a MiB of hex lines takes tens of seconds in QEMU.
image_partition_starts() {
  set -- $(image_bytes 0 1024 | awk "$LE_AWK"'
    END {
      if (b[510] != 85 || b[511] != 170) exit
      for (i = 0; i < 4; i++) { t = b[446 + 16 * i + 4]; if (t == 238) gpt = 1; else if (t != 0) print le(446 + 16 * i + 8, 4) }
      if (gpt) print "gpt", le(512 + 72, 8), le(512 + 80, 4), le(512 + 84, 4)
    }' H=0123456789abcdef)
  while [ $# -gt 0 ] && [ "$1" != gpt ]; do echo "$1"; shift; done
  [ "${1:-}" = gpt ] || return 0
  [ $(($3 * $4)) -le 65536 ] || { echo '?'; return 0; }
  image_bytes $(($2 * 512)) $(($3 * $4)) | awk "$LE_AWK"'
    END { for (o = 0; o + s <= NR; o += s) { z = 0; for (k = 0; k < 16; k++) z += b[o + k]; if (z) print le(o + 32, 8) } }' H=0123456789abcdef s="$4"
}

# The filesystem UUID of an ext4 superblock at byte $1 of the image (its magic 0xEF53 at 56, UUID at 104).
image_ext4_uuid() {
  image_bytes $(($1 + 1024)) 120 | awk 'NR == 57 { m = $0 } NR == 58 { m = m $0 } NR >= 105 && NR <= 120 { u = u $0; if (NR == 108 || NR == 110 || NR == 112 || NR == 114) u = u "-" }
    END { if (m == "53ef") print u }'
}

# Whole-disk job, before anything is written: the image's table must have a partition carrying the host
# filesystem UUID that GRUB's core.img and every grub.cfg entry search for. Without one, the written disk
# would have no host partition we know of: refused while the old system is still intact.
check_disk_image() {
  want=$(echo "$job_target_uuid" | tr A-F a-f)
  starts=$(image_partition_starts)
  [ -n "$starts" ] || fail_before_write "the image has no partition table (no MBR boot signature): it is not a whole disk"
  for lba in $starts; do
    [ "$lba" = '?' ] && { say "warning: the image's GPT has more entries than the flasher looks at: the host partition is checked after writing"; return 0; }
    if [ "$(image_ext4_uuid $((lba * 512)))" = "$want" ]; then
      status verify "the image's partition at sector $lba carries the host filesystem UUID $job_target_uuid"
      return 0
    fi
  done
  fail_before_write "no partition in the image's table ($(echo $starts | tr ' ' ,)) carries the host filesystem UUID $job_target_uuid that GRUB searches for"
}

# One attempt: decode from RAM onto the target, flush, drop the cache, read back and hash.
write_once() {
  set -o pipefail
  lz4 -dc "$PAYLOAD" | dd of="$target_dev" bs=1M conv=fsync 2>> "$LOG" || { set +o pipefail; echo "writing $target_dev failed (see $LOG)"; return 1; }
  set +o pipefail
  blockdev --flushbufs "$target_dev"
  echo 3 > /proc/sys/vm/drop_caches
  set -- $(dd if="$target_dev" bs=1M iflag=count_bytes count="$job_image_size" 2>> "$LOG" | sha256)
  [ "$1" = "$job_image_sha256" ] || { echo "read back from $target_dev: SHA-256 $1, expected $job_image_sha256"; return 1; }
}

write_target() {
  writing=1
  try=1
  while :; do
    t0=$(cut -d. -f1 /proc/uptime)
    status write "attempt $try of $WRITE_ATTEMPTS: $job_image_size bytes onto $target_dev"
    if why=$(write_once); then
      status written "$target_dev holds release $job_version, read back and verified ($(( $(cut -d. -f1 /proc/uptime) - t0 )) s)"
      return 0
    fi
    say "write attempt $try failed: $why"
    [ $try -ge "$WRITE_ATTEMPTS" ] && flasher_stuck "writing $target_dev failed $try times: $why"
    try=$((try + 1))
    sleep 2
  done
}

# Whole-disk job, once the disk is written and read back: the kernel reads the new partition table,
# which must have a partition of this disk with the host filesystem UUID that GRUB's core.img (and every
# grub.cfg entry) searches for. When it has not, the disk is written and verified (it is what the
# publisher made) but nothing on it is the host partition we know: a reboot would at best reach a GRUB
# prompt. There is no old system to go back to either, so the flasher stays up and says so.
reread_table() {
  blockdev --rereadpt "$target_dev" 2>> "$LOG" || disk_stuck "the kernel could not re-read the partition table of $target_dev (blockdev --rereadpt, see $LOG)"
  wait_for "findfs UUID=$job_target_uuid" 10 || disk_stuck "no partition on the new $target_dev carries the host filesystem UUID $job_target_uuid"
  new_host_dev=$(findfs "UUID=$job_target_uuid")
  [ "$(disk_of "$new_host_dev")" = "$job_target_disk" ] || disk_stuck "the host filesystem UUID $job_target_uuid is on $new_host_dev, not on a partition of $target_dev"
  status table "$target_dev: new partition table read; the host partition is $new_host_dev ($(blockdev --getsize64 "$new_host_dev") bytes at sector $(cat "/sys/class/block/$(basename "$new_host_dev")/start"))"
}

disk_stuck() {
  if [ -n "${retry_mode:-}" ]; then status stuck "$*"; exit 1; fi
  stay_up stuck "$* — $target_dev holds release $job_version as published (read back and verified), but it will not boot as this machine's host; the flasher stays up (a shell is on the console)" \
    "STUCK: $* ($target_dev is written and cannot be taken back; see $STATUS)"
}

# The status onto the new host partition, for the new system to read; best effort: the flash is done.
record_on_new_host() {
  if mount -t ext4 "${new_host_dev:-$target_dev}" "$HOST_MNT" 2>> "$LOG"; then
    mkdir -p "$HOST_MNT/boot/upgradectl/flasher" && cp "$STATUS" "$HOST_MNT/boot/upgradectl/flasher/status" && cp "$LOG" "$HOST_MNT/boot/upgradectl/flasher/log"
    umount "$HOST_MNT"
  else
    say "warning: could not mount the new host partition to leave the status there"
  fi
  sync
}

flasher_main() {
  setup_system
  status start "$(cat /proc/cmdline)"
  read_job
  keep_flasher_files
  network_up
  check_memory
  fetch_payload
  verify_payload
  [ -n "$job_target_disk" ] && check_disk_image
  write_target
  [ -n "$job_target_disk" ] && reread_table
  arm_first_boot
  record_on_new_host
  status done "rebooting into release $job_version"
  sleep 1
  reboot -f
  sleep 30
}

# Rescue: GRUB could load no image, so there is nothing to go back to. The rescue job names the
# current release (written by upgradectl whenever it writes the boot files, from the manifest it verified
# at prepare): fetch and verify it as a flash, then put it back as /images/<version>.img, make it GRUB's
# default and reboot. A failed attempt never reboots (it would come straight back here): the flasher stays
# up, says why on the console, and tries again every RESCUE_RETRY_SECONDS. A rescue that succeeded but
# whose image GRUB still cannot load would bring the machine back here: after RESCUE_MAX rescues that no
# upgradectl run has acknowledged (it removes the count when it writes the boot files) it stays up too.
RESCUE_COUNT_REL=boot/upgradectl/flasher/rescue-count
RESCUE_MAX=${RESCUE_MAX:-2}

# grubenv is a 1024-byte block GRUB reads without the journal: rewritten in place (never truncated).
# The boot selection (default, one-shot, trial, counts) becomes exactly the VAR=VALUE lines given;
# other tools' variables are kept. Prints why and fails when it leaves the block as it is.
write_grubenv() {
  env=$HOST_MNT/boot/grub/grubenv new=$FLASHER_DIR/grubenv
  [ "$(stat -c %s "$env" 2>/dev/null)" = 1024 ] || { echo "$env is not a 1024-byte block"; return 1; }
  { echo '# GRUB Environment Block'
    grep -v -e '^#' -e '^saved_entry=' -e '^next_entry=' -e '^upgradectl_default_tries=' -e '^upgradectl_trial=' -e '^upgradectl_tries=' "$env"
    for line in "$@"; do echo "$line"; done; } > "$new"
  n=$(wc -c < "$new")
  [ "$n" -le 1024 ] || { echo "the new grubenv would exceed 1024 bytes"; return 1; }
  head -c $((1024 - n)) /dev/zero | tr '\0' '#' >> "$new"
  dd if="$new" of="$env" bs=1024 count=1 conv=notrunc,fsync 2>> "$LOG" || { echo "writing $env failed"; return 1; }
}

# The restored image as the default, with no trial or count pending.
set_default_entry() { why=$(write_grubenv "saved_entry=$1") || say "warning: $why; left as it is"; }

rescue_count() { cat "$HOST_MNT/$RESCUE_COUNT_REL" 2>/dev/null | grep -E '^[0-9]+$' || echo 0; }

# The verified payload into /images on the host partition (mounted read-write now: the only writes of a
# rescue), read back, renamed into place.
restore_image() {
  mount -t ext4 "$host_dev" "$HOST_MNT" || fail_before_write "cannot mount the host partition $host_dev read-write"
  done_before=$(rescue_count)
  [ "$done_before" -lt "$RESCUE_MAX" ] || fail_before_write "$done_before rescues since upgradectl last ran and GRUB still loads no image: not trying again (see $RESCUE_COUNT_REL)"
  img=$HOST_MNT/images/$job_version.img tmp=$HOST_MNT/images/.staging/$job_version.rescue
  mkdir -p "$HOST_MNT/images/.staging"
  # The image GRUB could not load goes first: a host partition sized for three images may not hold it twice.
  rm -f "$tmp" "$img"
  status restore "writing /images/$job_version.img from the verified payload"
  lz4 -d -f --sparse "$PAYLOAD" "$tmp" >> "$LOG" 2>&1 || fail_before_write "writing $tmp failed (host partition full?)"
  sync
  echo 3 > /proc/sys/vm/drop_caches
  set -- $(sha256 "$tmp")
  [ "$1" = "$job_image_sha256" ] || fail_before_write "read back /images/.staging/$job_version.rescue: SHA-256 $1, expected $job_image_sha256"
  chmod 600 "$tmp"
  mv "$tmp" "$img" || fail_before_write "cannot rename $tmp to $img"
  echo $((done_before + 1)) > "$HOST_MNT/$RESCUE_COUNT_REL"
  set_default_entry "upgradectl-$job_version"
  cp "$STATUS" "$HOST_MNT/boot/upgradectl/flasher/status" && cp "$LOG" "$HOST_MNT/boot/upgradectl/flasher/log"
  sync
  umount "$HOST_MNT" || fail_before_write "cannot unmount the host partition"
}

rescue_attempt() {
  umount /ram 2>/dev/null
  read_job
  network_up
  check_memory
  fetch_payload
  verify_payload
  restore_image
}

rescue_main() {
  JOB_KIND=rescue
  setup_system
  status start "rescue: GRUB could load no image; $(cat /proc/cmdline)"
  n=0
  while :; do
    n=$((n + 1))
    if ( rescue_attempt ); then
      status done "release $(sed -n 's/^version=//p' "$STATUS") is back in /images and GRUB's default: rebooting into it"
      sleep 1
      reboot -f
      sleep 30
    fi
    [ $n = 1 ] && setsid sh -c 'exec sh </dev/console >/dev/console 2>&1' &
    say "RESCUE FAILED (attempt $n): $(sed -n 's/^message=//p' "$STATUS"). No image can boot; this machine stays up and tries again in $RESCUE_RETRY_SECONDS s, or at once after 'sh /lib/upgradectl/flasher.sh rescue-now' (a shell is on the console)"
    # A wait the operator can cut short (rescue-now): the mirror fixed, no need to sit out the timer.
    sleep "$RESCUE_RETRY_SECONDS" &
    echo $! > "$FLASHER_DIR/rescue-wait.pid"
    wait $! 2>/dev/null
    rm -f "$FLASHER_DIR/rescue-wait.pid"
  done
}

# `sh /lib/upgradectl/flasher.sh rescue-now` (console or SSH): a failed rescue tries again at once.
if [ "${1:-}" = rescue-now ]; then
  [ -f "$FLASHER_DIR/rescue-wait.pid" ] || { echo "upgradectl-flasher: no rescue is waiting to try again"; exit 1; }
  kill "$(cat "$FLASHER_DIR/rescue-wait.pid")" && echo "upgradectl-flasher: the rescue tries again now; its status is in $STATUS"
  exit
fi

# The first boot after a flash (docs/flasher.md): a trial like any other, whose fallback is this flasher
# in hold mode, since the old system is gone. Before writing, the flasher's own kernel, initrd and the
# operator's SSH keys are kept in RAM (they are on the partition about to be overwritten); after the
# read-back they go onto the new partition when its publisher did not put a flasher there, with the
# trial marker, and GRUB's one-shot names the new default while saved_entry names the reboot entry,
# which boots the flasher in hold mode when those files exist (src/grub/render.ts, renderHoldBranch).
# The new system's upgradectl turns the marker into its trial state and confirms it as any trial.
KEEP=${KEEP:-/keep}
KEPT_NAME=machine-files.tar
KEPT_HASH=machine-files.sha256
FLASH_TRIAL_REL=boot/upgradectl/flasher/trial
FLASH_TRIAL_MAGIC='upgradectl-flash-trial 1'
HOLD_SAY_SECONDS=${HOLD_SAY_SECONDS:-60}

# In RAM (a tmpfs of their size: MemAvailable no longer counts them, so the memory check that follows
# does). Without the flasher's own files the flash goes on, and the new system's first boot is not a
# trial. Without the machine's files (a job with `keep`) it does not: a flash without them would bring
# the machine up as the release as published, with no identity, network set-up, host keys or accounts.
keep_flasher_files() {
  d=$HOST_MNT/boot/upgradectl/flasher
  mount -t ext4 -o ro,noload "$host_dev" "$HOST_MNT" || fail_before_write "cannot mount the host partition $host_dev to keep the flasher's files"
  # A failed stat must not reach ash's arithmetic (a syntax error there would end PID 1's script).
  k=$(stat -c %s "$d/vmlinuz" 2>/dev/null) i=$(stat -c %s "$d/initrd.img" 2>/dev/null)
  is_uint "$k" && is_uint "$i" || k=0 i=0
  m=${job_keep_size:-0}
  size=$((k + i + m + 65536))
  mkdir -p "$KEEP"
  if [ "$k" = 0 ] && [ "$m" = 0 ] || ! mount -t tmpfs -o "size=$size,mode=0700" tmpfs "$KEEP"; then
    [ "$m" = 0 ] || fail_before_write "cannot hold this machine's files in RAM (a tmpfs of $size bytes)"
    say "warning: could not keep the flasher's files in RAM: the new system's first boot will not be a trial"
    umount "$HOST_MNT"
    return 0
  fi
  if [ "$m" != 0 ]; then
    why=$(keep_machine_files "$d/$KEPT_NAME") || fail_before_write "$why"
  fi
  if [ "$k" != 0 ] && cp "$d/vmlinuz" "$d/initrd.img" "$KEEP/"; then
    # Only keys copy_ssh_keys accepted (root's, not writable by others).
    [ -s /root/.ssh/authorized_keys ] && cp /root/.ssh/authorized_keys "$KEEP/"
    status keep "the flasher's kernel and initrd$([ -f "$KEEP/authorized_keys" ] && echo ' and SSH keys')$([ "$m" != 0 ] && echo " and this machine's files") kept in RAM ($((size / 1048576)) MiB) for the new partition"
  else
    rm -f "$KEEP/vmlinuz" "$KEEP/initrd.img"
    say "warning: could not keep the flasher's files in RAM: the new system's first boot will not be a trial"
    [ "$m" = 0 ] || status keep "this machine's files kept in RAM ($m bytes) for the new partition"
  fi
  umount "$HOST_MNT"
}

# The archive $1 commit --reflash packed, into RAM: root-only, of the job's size, and (checked on the
# copy in RAM, which is what goes onto the new partition) of the job's SHA-256. Prints why it is not.
keep_machine_files() {
  [ -f "$1" ] && [ ! -L "$1" ] || { echo "this machine's files ($1) are missing"; return 1; }
  set -- "$1" $(stat -c '%u %a %s' "$1")
  [ "$2" = 0 ] && [ $(( 0$3 & 077 )) -eq 0 ] || { echo "$1 is not root-only (uid $2, mode $3): refused"; return 1; }
  [ "$4" = "$job_keep_size" ] || { echo "$1 has $4 bytes, the job says $job_keep_size"; return 1; }
  cp "$1" "$KEEP/$KEPT_NAME" || { echo "cannot copy $1 into RAM"; return 1; }
  [ "$(sha256 "$KEEP/$KEPT_NAME")" = "$job_keep_sha256" ] || { rm -f "$KEEP/$KEPT_NAME"; echo "$1 is not the archive the job names (SHA-256)"; return 1; }
}

# The machine's files onto the mounted new partition, with the hash file that only the flasher writes:
# the new system's upgradectl restores an archive only when that file is beside it (kept-files.ts).
place_kept_files() {
  [ -f "$KEEP/$KEPT_NAME" ] || return 0
  d=$HOST_MNT/boot/upgradectl/flasher
  if mkdir -p "$d" && cp "$KEEP/$KEPT_NAME" "$d/$KEPT_NAME.tmp" && chmod 600 "$d/$KEPT_NAME.tmp" && mv "$d/$KEPT_NAME.tmp" "$d/$KEPT_NAME" \
    && echo "$job_keep_sha256" > "$d/$KEPT_HASH.tmp" && chmod 600 "$d/$KEPT_HASH.tmp" && mv "$d/$KEPT_HASH.tmp" "$d/$KEPT_HASH"; then
    status kept "this machine's files ($job_keep_size bytes) are on the new partition: its upgradectl restores them at its first boot"
  else
    say "warning: could not put this machine's files on the new partition: the new system starts without its identity, network set-up, host keys and accounts"
  fi
}

# On the new partition, mounted: prints what it armed, or why it did not and fails (nothing armed).
arm_on_new_host() {
  cfg=$HOST_MNT/boot/grub/grub.cfg d=$HOST_MNT/boot/upgradectl/flasher
  entry=$(sed -n 's/^saved_entry=//p' "$HOST_MNT/boot/grub/grubenv" 2>/dev/null | head -n 1)
  v=${entry#upgradectl-}
  case "$entry" in upgradectl-flasher|upgradectl-rescue|upgradectl-reboot|upgradectl-distro) v= ;; upgradectl-*) ;; *) v= ;; esac
  case "$v" in ''|*[!A-Za-z0-9._+~-]*) echo "its grubenv names no upgradectl image as the default (saved_entry=$entry)"; return 1;; esac
  [ -f "$HOST_MNT/images/$v.img" ] || { echo "its default image /images/$v.img is missing"; return 1; }
  # The hold entry is in grub.cfg only when an upgradectl that renders it wrote the published partition.
  grep -q 'upgradectl\.hold=1' "$cfg" || { echo "its grub.cfg has no hold mode in the reboot entry (written by an older upgradectl)"; return 1; }
  [ -f "$d/vmlinuz" ] && [ -f "$d/initrd.img" ] || [ -f "$KEEP/vmlinuz" ] || { echo "the flasher's files were not kept in RAM"; return 1; }
  mkdir -p "$d"
  for f in vmlinuz initrd.img authorized_keys; do
    if [ ! -e "$d/$f" ] && [ -f "$KEEP/$f" ]; then
      cp "$KEEP/$f" "$d/$f.tmp" && chmod 600 "$d/$f.tmp" && mv "$d/$f.tmp" "$d/$f" || { echo "cannot put $f into $d"; return 1; }
    fi
  done
  # The job's network too: hold mode has no job, and a machine without DHCP needs its static address there.
  net="network dhcp"
  [ "$job_net" = static ] && net="network static $job_net_mac $job_net_addr $job_net_gw $job_net_dns"
  printf '%s\nversion %s\nrelease %s\n%s\n' "$FLASH_TRIAL_MAGIC" "$v" "$job_version" "$net" > "$d/trial.tmp" && chmod 600 "$d/trial.tmp" && mv "$d/trial.tmp" "$d/trial" || { echo "cannot write $d/trial"; return 1; }
  # Last: the one-shot is what makes the boot a trial. Its extra attempts are not used (one trial boot).
  if ! why=$(write_grubenv 'saved_entry=upgradectl-reboot' "next_entry=$entry" "upgradectl_trial=$entry"); then
    rm -f "$d/trial"
    echo "$why"
    return 1
  fi
  echo "the first boot of image $v is a trial: unless its upgradectl confirms it, GRUB boots this flasher in hold mode"
}

arm_first_boot() {
  # A whole-disk flash: the host partition found on the re-read table (reread_table).
  if ! mount -t ext4 "${new_host_dev:-$target_dev}" "$HOST_MNT" 2>> "$LOG"; then
    say "warning: cannot mount the new host partition: its first boot is not a trial$([ -f "$KEEP/$KEPT_NAME" ] && echo ", and this machine's files are not on it")"
    return 0
  fi
  place_kept_files
  if why=$(arm_on_new_host); then status trial "$why"; else say "warning: the new system's first boot is not a trial: $why"; fi
  umount "$HOST_MNT"
  sync
}

# The flash job's network line from the trial marker $1 (hold mode has no job), checked as in a job:
# absent or malformed means DHCP.
trial_network() {
  job_net=dhcp
  net=$(sed -n 's/^network //p' "$1" 2>/dev/null | head -n 1)
  [ -n "$net" ] || return 0
  check_network $net > /dev/null || job_net=dhcp
}

# GRUB's reboot entry, after a reflashed system's first boot did not confirm: nothing to go back to,
# nothing to write. Network and SSH for the operator, the reason on the console every minute and in
# the status file, a shell on the console; never a reboot (it would come straight back here).
hold_main() {
  JOB_KIND=hold
  setup_system
  status start "hold: $(cat /proc/cmdline)"
  host_uuid=$(cmdline_arg upgradectl.host) v='?' job_version='?'
  mkdir -p "$HOST_MNT"
  if [ -n "$host_uuid" ] && wait_for "findfs UUID=$host_uuid" 15 && mount -t ext4 -o ro,noload "$(findfs "UUID=$host_uuid")" "$HOST_MNT"; then
    copy_ssh_keys
    v=$(sed -n 's/^version \([A-Za-z0-9._+~-]*\)$/\1/p' "$HOST_MNT/$FLASH_TRIAL_REL" 2>/dev/null | head -n 1)
    job_version=$(sed -n 's/^release \([A-Za-z0-9._+~-]*\)$/\1/p' "$HOST_MNT/$FLASH_TRIAL_REL" 2>/dev/null | head -n 1)
    trial_network "$HOST_MNT/$FLASH_TRIAL_REL"
    umount "$HOST_MNT"
  fi
  msg="release ${job_version:-?}'s reflashed system (image ${v:-?}) did not confirm its first boot and there is no old system to go back to: this machine stays in the flasher and does not reboot. The flash log is boot/upgradectl/flasher/log on the host partition; a shell is on the console"
  ( network_up ) || say "warning: $(sed -n 's/^message=//p' "$STATUS")"
  stay_up hold "$msg" "HOLD: $msg" "$HOLD_SAY_SECONDS"
}

# `sh /lib/upgradectl/flasher.sh retry` on the console of a stuck flasher: the same verified payload
# in RAM, the same target, once more.
if [ "${1:-}" = retry ]; then
  retry_mode=1 WRITE_ATTEMPTS=1
  . "$FLASHER_DIR/job.env"
  write_target && { [ -z "$job_target_disk" ] || reread_table; } && arm_first_boot && record_on_new_host && reboot -f
fi
