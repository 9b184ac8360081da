#!/bin/sh
# Runs on the host against the fresh test instance imgraph launched from the new AMI.
set -eu
: "${IMGRAPH_INSTANCE_ID:?imgraph did not say which instance to test}"
: "${IMGRAPH_IMAGE_ID:?imgraph did not say which AMI is under test}"
case "$IMGRAPH_INSTANCE_ID" in
  i-*) ;;
  *) echo "not an EC2 instance id: $IMGRAPH_INSTANCE_ID" >&2; exit 1 ;;
esac
echo "testing $IMGRAPH_IMAGE $IMGRAPH_VERSION ($IMGRAPH_IMAGE_ID) on $IMGRAPH_INSTANCE_ID at ${IMGRAPH_INSTANCE_IP:-no address}"
