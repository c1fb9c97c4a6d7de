// The emulator's stand-in for CUDA's bfloat16 type: storage and the conversion the kernels use.
#pragma once
#include <stdint.h>
#include <string.h>

struct __nv_bfloat16 {
	uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 h) {
	const uint32_t bits = (uint32_t)h.bits << 16;
	float f;
	memcpy(&f, &bits, sizeof f);
	return f;
}
