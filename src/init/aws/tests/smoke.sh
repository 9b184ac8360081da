#!/bin/sh
# Runs on this machine against a fresh instance of the new AMI.
set -eu
: "${IMGRAPH_INSTANCE_ID:?}"
echo "instance $IMGRAPH_INSTANCE_ID at ${IMGRAPH_INSTANCE_IP:-no address} from $IMGRAPH_IMAGE_ID"
# A real test would check the service, e.g.:
#   curl -fsS --retry 30 --retry-connrefused "http://$IMGRAPH_INSTANCE_IP/"
