"""Files the package ships (``config/``, ``launch/``), found where they were installed.

``setup.py`` installs them as data files under ``<prefix>/share/depthclip_ros``: colcon's
install space (found through the ament index), a virtual environment or the system
prefix (``pip install .``), or the user base (``pip install --user``). A source checkout
is the last resort, for running from the tree. Never a path relative to this module
alone: under ``pip install`` that points into ``site-packages``, where nothing is.
"""

from __future__ import annotations

from pathlib import Path
import site
import sys
import sysconfig

PACKAGE = 'depthclip_ros'


def share_directories() -> list[Path]:
    """Candidate ``share/depthclip_ros`` folders, most specific first."""
    found = []
    try:
        from ament_index_python.packages import get_package_share_directory
        found.append(Path(get_package_share_directory(PACKAGE)))
    except Exception:  # noqa: BLE001 - not installed, no AMENT_PREFIX_PATH, no index entry
        pass
    prefixes = [sys.prefix, sysconfig.get_path('data'), site.getuserbase()]
    found += [Path(prefix) / 'share' / PACKAGE for prefix in prefixes if prefix]
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / 'package.xml').is_file():
        found.append(checkout)
    return found


def share_file(relative: str) -> Path:
    """The installed ``share/depthclip_ros/<relative>``; raises ``FileNotFoundError``
    listing where it looked."""
    looked = []
    for directory in share_directories():
        path = directory / relative
        if path.is_file():
            return path
        looked.append(str(path))
    raise FileNotFoundError(f'{relative} of {PACKAGE} is not installed; looked in: '
                            f'{", ".join(looked)} (reinstall the package: pip install . or '
                            f'colcon build)')
