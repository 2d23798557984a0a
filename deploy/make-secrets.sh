#!/bin/sh
# The files compose.yaml mounts as secrets, made once in deploy/secrets/ (or in $1):
# random passwords for Redis and Postgres, a private CA, and a certificate it
# signs for the `redis` service (also valid for localhost, for the healthcheck).
# Files that exist are kept: run it again to make only what is missing. To renew
# Redis's certificate, delete redis.crt and redis.key and run it again.
set -eu

dir=${1:-"$(dirname "$0")/secrets"}
umask 077
mkdir -p "$dir"
chmod 700 "$dir"

password() {
    [ -s "$dir/$1" ] || openssl rand -hex 32 >"$dir/$1"
}
password redis_password
password postgres_password

if [ ! -s "$dir/redis-ca.crt" ]; then
    openssl req -x509 -new -nodes -days 3650 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -subj "/CN=execq Redis CA" -keyout "$dir/redis-ca.key" -out "$dir/redis-ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

if [ ! -s "$dir/redis.crt" ]; then
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "/CN=redis" \
        -keyout "$dir/redis.key" -out "$dir/redis.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=DNS:redis,DNS:localhost,IP:127.0.0.1" \
        "basicConstraints=critical,CA:FALSE" "extendedKeyUsage=serverAuth" >"$dir/redis.ext"
    openssl x509 -req -days 825 -in "$dir/redis.csr" -CA "$dir/redis-ca.crt" \
        -CAkey "$dir/redis-ca.key" -CAcreateserial -extfile "$dir/redis.ext" \
        -out "$dir/redis.crt" 2>/dev/null
    rm -f "$dir/redis.csr" "$dir/redis.ext"
fi

# The containers read their secrets as users of their own: the files they mount are
# readable, the directory is not. The CA's key is mounted nowhere and stays private.
chmod 644 "$dir/redis_password" "$dir/postgres_password" "$dir/redis-ca.crt" \
    "$dir/redis.crt" "$dir/redis.key"
echo "secrets in $dir"
