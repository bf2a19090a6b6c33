# Environment for anything that may start rclpy on this machine (source it; the test and
# demo scripts do).
# Network safety: DDS discovery stays on this host, in a random domain of its own, whatever
# the shell exports (a robot's domain must never hear a test or a benchmark), never the
# exported one; it says which. To reach other nodes from this shell, export your
# ROS_DOMAIN_ID after sourcing. (ROS_LOCALHOST_ONLY is ignored by the PyPI wheels.)
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
_depthclip_exported=${ROS_DOMAIN_ID:-}
while :; do
  ROS_DOMAIN_ID=$(( (RANDOM % 101) + 1 ))
  [ "$ROS_DOMAIN_ID" != "$_depthclip_exported" ] && break
done
export ROS_DOMAIN_ID
export DEPTHCLIP_OWN_ROS_DOMAIN=$ROS_DOMAIN_ID  # tools/node_process keeps this run's own domain
echo "ROS_DOMAIN_ID=$ROS_DOMAIN_ID (random, chosen for this shell${_depthclip_exported:+; the exported $_depthclip_exported is not used}), discovery on this host only" >&2
unset _depthclip_exported
# The PyPI ROS wheels need the venv as the ament prefix.
export AMENT_PREFIX_PATH=${VIRTUAL_ENV:-$(pwd)/.venv}${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}
