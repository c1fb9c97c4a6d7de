// The emulator's stand-in for CUDA's half type: storage and the conversion the kernels use.
#pragma once
#include <stdint.h>
#include <string.h>

struct __half {
	uint16_t bits;
};

// IEEE 754 binary16 to binary32, exactly (subnormals, infinities and NaNs included).
inline float __half2float(__half h) {
	uint32_t sign = (uint32_t)(h.bits & 0x8000u) << 16, exponent = (h.bits >> 10) & 0x1f, mantissa = h.bits & 0x3ff, bits;
	if (exponent == 0x1f) {
		bits = sign | 0x7f800000u | (mantissa << 13);
	} else if (exponent != 0) {
		bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
	} else if (mantissa == 0) {
		bits = sign;
	} else {
		exponent = 113;
		while (!(mantissa & 0x400)) {
			mantissa <<= 1;
			exponent--;
		}
		bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
	}
	float f;
	memcpy(&f, &bits, sizeof f);
	return f;
}
