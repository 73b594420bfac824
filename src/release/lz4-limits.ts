/**
 * The largest LZ4 block (and our largest frame's raw size): 4 MiB. Its own module so that checking a
 * manifest does not load lz4-napi (~20–35 ms of a prepare that may have nothing to download).
 */
export const MAX_BLOCK = 4 * 1024 * 1024;
