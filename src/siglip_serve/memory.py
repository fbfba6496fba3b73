"""Give the memory of large decoded images back to the operating system once they are freed.

Pillow stores an image as a chain of blocks of at most ``PILLOW_BLOCK_SIZE`` bytes, 16 MiB by
default (Pillow docs, "Block allocator"), each one a `malloc`. glibc serves an allocation that
large with `mmap` at first, but freeing an mmap-ed chunk raises its mmap threshold to that
chunk's size, up to DEFAULT_MMAP_THRESHOLD_MAX, 32 MiB on 64-bit systems (mallopt(3),
M_MMAP_THRESHOLD: "dynamic mmap threshold"). From then on 16 MiB blocks come from the heap
(each decode thread has its own arena, malloc(3)), and freed heap memory is rarely returned:
only what lies at the top of a heap is trimmed. Three rounds of four concurrent 8000x8000 PNGs
left the server 0.6 GB larger for good, and the peak 0.4 GB over what the 128 MP pixel budget
allows, since each decode thread kept its own retained heap (bench/memory_bounds.py).

Blocks larger than the 32 MiB maximum are always mmap-ed and unmapped again on `free`, so
64 MiB blocks make every large image go back to the system when it is freed. Images under
32 MiB (about 8 MP in RGB, stored at 4 bytes a pixel) are unaffected, and nothing outside
Pillow is (torch's allocations keep glibc's dynamic threshold).
"""

from __future__ import annotations

import os

from PIL import Image

# Above glibc's DEFAULT_MMAP_THRESHOLD_MAX (4 MiB x sizeof(long) = 32 MiB on 64-bit), so that
# the dynamic threshold can never reach it; a large image is then a few mmap-ed blocks.
PILLOW_BLOCK_BYTES = 64 * 1024 * 1024


def configure_image_memory() -> dict[str, int]:
    """Make Pillow allocate large images in blocks that are returned to the OS when freed.

    Call once at startup, before serving. Leaves Pillow alone when ``PILLOW_BLOCK_SIZE`` is
    set in the environment (Pillow applies it on import; the operator chose). Returns the
    settings in effect, for the startup log.
    """
    if "PILLOW_BLOCK_SIZE" not in os.environ:
        Image.core.set_block_size(PILLOW_BLOCK_BYTES)
    return {"pillow_block_size": Image.core.get_block_size(), "pillow_blocks_max": Image.core.get_blocks_max()}
