"""The Qt-free engine of the studio. Nothing under studio.core may import Qt (see pyproject's
import-linter contract); the window and the command line are thin faces over these calls."""
