# Environment for anything that may start rclpy on this machine (source it).
# Network safety: DDS discovery stays on this host, in a random domain per run
# (ROS_LOCALHOST_ONLY is ignored by the PyPI wheels).
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( (RANDOM % 101) + 1 ))}
# The PyPI ROS wheels need the venv as the ament prefix.
export AMENT_PREFIX_PATH=${VIRTUAL_ENV:-$(pwd)/.venv}${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}
