// Helpers of the checks written in C++ (the engine's own, kernels/emu/test_engine.cpp): pass/fail
// counting, launches through the engine, messages.
#pragma once
#include "shim.h"

#include <algorithm>
#include <cstdarg>
#include <cmath>
#include <random>
#include <string>
#include <vector>

// Counts (defined in main.cpp).
extern int g_passed, g_failed;

inline void check(bool ok, const std::string& what) {
    if (ok) {
        ++g_passed;
    } else {
        ++g_failed;
        if (g_failed <= 40) std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    }
}

// Runs a launch through the engine; a misused barrier or shuffle counts as a failure. Successive
// calls cycle through the block orders and thread-scheduling policies (these kernels' results
// must not depend on them).
inline void run(emu::Launch l, const std::function<void()>& k, const std::string& what) {
    static unsigned n = 0;
    l.block_order = (int)(n % 3);
    l.thread_order = (int)(n / 3 % 4);
    l.seed = ++n;
    check(emu::launch(l, k), what + ": the launch broke a barrier or shuffle rule (see EMU FAIL above)");
}
// The same, in the launch's own orders.
inline void run_as(const emu::Launch& l, const std::function<void()>& k, const std::string& what) {
    check(emu::launch(l, k), what + ": the launch broke a barrier or shuffle rule (see EMU FAIL above)");
}

inline std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
inline std::string fmt(const char* f, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, f);
    std::vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

// The checks written here: the engine's own.
void test_engine();
