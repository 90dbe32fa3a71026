/*
 * crc32c.h — CRC32C (Castagnoli), the checksum every record and chunk written to NVMe
 * carries and every read verifies (issue 3). SSE4.2's crc32 instruction where the
 * processor has it, a table otherwise; both give identical results.
 */
#ifndef SPARQ_TIERS_CRC32C_H
#define SPARQ_TIERS_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extends crc (0 for a fresh checksum) over buf; tier_crc32c(0, "123456789", 9) == 0xe3069283. */
uint32_t tier_crc32c(uint32_t crc, const void *buf, size_t len);

/* The table path alone, whatever the processor: tests check the SSE4.2 path against it,
 * benchmarks print both. Same convention and results as tier_crc32c. */
uint32_t tier_crc32c_portable(uint32_t crc, const void *buf, size_t len);

#endif
