#!/bin/sh
# Runs inside the image during the build (bwrap, network on): brings the image up to date
# with the archive, security fixes included, and installs the server's packages.
set -eu
export DEBIAN_FRONTEND=noninteractive
# No service starts during the build: maintainer scripts ask policy-rc.d first.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
apt-get update -qq
apt-get -y -qq upgrade
apt-get install -y -qq --no-install-recommends $(sed 's/#.*//' packages/server.txt)
# Indexes and downloaded packages do not belong in the image: probes fetch fresh ones.
apt-get clean
rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d
