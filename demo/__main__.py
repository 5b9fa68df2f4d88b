"""``python -m demo`` starts the demo shop (same options as ``python -m demo.shop``)."""

from demo.shop import main

main()
