// The kernel entries the emulation can run by name (kernels/emu/k_*.cpp register them): each
// takes its argument struct (kernels/*.cu: CeArgs, BceArgs, MixArgs, SoftArgs) as bytes, as the
// driver passes it. main.cpp runs the cases tests/kernels_emulated writes with them.
#pragma once
#include "shim.h"

#include <map>
#include <string>

struct EmuEntry {
    size_t args_size;
    void (*run)(const void* args);
};

inline std::map<std::string, EmuEntry>& emu_entries() {
    static std::map<std::string, EmuEntry> m;
    return m;
}

struct EmuRegister {
    EmuRegister(const char* name, size_t size, void (*run)(const void*)) { emu_entries()[name] = {size, run}; }
};

// EMU_ENTRY(ce_warp_f32, CeArgs): registers `extern "C" void ce_warp_f32(const CeArgs)`.
#define EMU_ENTRY(name, Args)                                                 \
    static EmuRegister emu_register_##name(#name, sizeof(Args), [](const void* p) { \
        Args g;                                                               \
        std::memcpy(&g, p, sizeof g);                                         \
        name(g);                                                              \
    });
