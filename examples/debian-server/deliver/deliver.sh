#!/bin/sh
# Stands in for a real rollout (an autoscaling group's launch template, a VM pool):
# records which version each environment received.
set -eu
mkdir -p .imgraph/deliveries
echo "$IMGRAPH_IMAGE $IMGRAPH_VERSION $IMGRAPH_IMAGE_ID" >> ".imgraph/deliveries/$IMGRAPH_ENVIRONMENT"
echo "delivered $IMGRAPH_IMAGE $IMGRAPH_VERSION to $IMGRAPH_ENVIRONMENT"
