#!/bin/sh
# Stands in for a real rollout: records which version the environment received.
set -eu
mkdir -p .imgraph/deliveries
echo "$IMGRAPH_IMAGE $IMGRAPH_VERSION $IMGRAPH_IMAGE_ID" >> ".imgraph/deliveries/$IMGRAPH_ENVIRONMENT"
echo "delivered $IMGRAPH_IMAGE $IMGRAPH_VERSION to $IMGRAPH_ENVIRONMENT"
