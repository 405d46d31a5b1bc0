#!/usr/bin/env bash
# Per-device certificates for a maskwatch fleet (deploy/mosquitto/fleet-certs.conf).
#   deploy/provision-device.sh ca DIR               make a fleet CA in DIR (once; keep DIR safe)
#   deploy/provision-device.sh broker DIR NAME...   the broker's certificate, for the host names
#                                                   and addresses the devices connect to (for
#                                                   deploy/nats/cluster.conf: one for all three
#                                                   nodes, naming each; it also proves a node to
#                                                   the others, so it serves as a client too)
#   deploy/provision-device.sh issue DIR DEVICE_ID  a certificate for one device (CN = DEVICE_ID;
#                                                   also one for Home Assistant: homeassistant)
#   deploy/provision-device.sh install DIR DEVICE_ID [ROOT]
#                                                   copy it to ROOT/etc/maskwatch/tls (run on
#                                                   the device, or with ROOT a mounted SD card)
# The CN is the MQTT user name the broker's ACL sees (maskwatch/%u/#), so each device can
# publish only its own topics; set device_id to the same name in its config.yaml.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
command -v openssl >/dev/null || { echo "provision-device: openssl is needed" >&2; exit 69; }
cmd=$1 dir=$2

valid_id() {
  [[ $1 =~ ^[A-Za-z0-9_-]{1,64}$ ]] || {
    echo "provision-device: device id '$1' must be 1-64 of A-Z a-z 0-9 _ -" >&2; exit 2; }
}

case "$cmd" in
  ca)
    mkdir -p "$dir" && chmod 700 "$dir"
    if [ -e "$dir/ca.key" ]; then echo "provision-device: $dir/ca.key exists; keeping it" >&2
    else
      openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -subj "/CN=maskwatch fleet CA" \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
      chmod 600 "$dir/ca.key"
    fi
    echo "CA: $dir/ca.crt (copy it to the broker's cafile; ca.key never leaves $dir)";;
  broker)
    [ $# -ge 3 ] || usage
    [ -e "$dir/ca.key" ] || { echo "provision-device: no CA in $dir (run: $0 ca $dir)" >&2; exit 66; }
    shift 2
    san=""
    for name in "$@"; do  # the names the devices' mqtt.host may hold: each one verified
      if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then san+="${san:+,}IP:$name"
      elif [[ $name =~ ^[A-Za-z0-9.-]{1,253}$ ]]; then san+="${san:+,}DNS:$name"
      else echo "provision-device: '$name' is neither a host name nor an address" >&2; exit 2; fi
    done
    out="$dir/broker"; mkdir -p "$out" && chmod 700 "$out"
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" > "$out/server.ext"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$1" -keyout "$out/server.key" \
      -out "$out/server.csr" 2>/dev/null
    openssl x509 -req -in "$out/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
      -CAcreateserial -days 825 -extfile "$out/server.ext" -out "$out/server.crt" 2>/dev/null
    chmod 600 "$out/server.key"; rm -f "$out/server.csr" "$out/server.ext"
    echo "broker ($san): copy $dir/ca.crt, $out/server.crt and $out/server.key to /etc/mosquitto/certs/ (server.key readable by the mosquitto user only), or to /etc/nats/certs/ on each NATS node";;
  issue)
    [ $# -eq 3 ] || usage
    valid_id "$3"
    [ -e "$dir/ca.key" ] || { echo "provision-device: no CA in $dir (run: $0 ca $dir)" >&2; exit 66; }
    out="$dir/devices/$3"; mkdir -p "$out" && chmod 700 "$out"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$3" -keyout "$out/device.key" \
      -out "$out/device.csr" 2>/dev/null
    openssl x509 -req -in "$out/device.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
      -CAcreateserial -days 825 -out "$out/device.crt" 2>/dev/null
    chmod 600 "$out/device.key"; rm -f "$out/device.csr"
    echo "device $3: $out/device.crt";;
  install)
    [ $# -ge 3 ] || usage
    valid_id "$3"
    src="$dir/devices/$3" root=${4:-}
    [ -e "$src/device.crt" ] || { echo "provision-device: $3 not issued (run: $0 issue $dir $3)" >&2; exit 66; }
    dest="$root/etc/maskwatch/tls"; mkdir -p "$dest"
    install -m 644 "$dir/ca.crt" "$dest/ca.crt"
    install -m 644 "$src/device.crt" "$dest/device.crt"
    install -m 600 "$src/device.key" "$dest/device.key"
    if id maskwatch >/dev/null 2>&1 && [ -z "$root" ]; then chown maskwatch "$dest/device.key"; fi
    cat > "$dest/mqtt-tls.yaml" <<YAML
# merge into /etc/maskwatch/config.yaml (device $3)
device_id: $3
mqtt:
  port: 8884
  require_tls: true
  tls: {enabled: true, ca_file: /etc/maskwatch/tls/ca.crt, cert_file: /etc/maskwatch/tls/device.crt, key_file: /etc/maskwatch/tls/device.key}
YAML
    echo "installed in $dest (settings to merge: $dest/mqtt-tls.yaml)";;
  *) usage;;
esac
