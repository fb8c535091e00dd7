// The host emulation of every kernel (scripts/emulate.sh builds and runs it).
//
//   emulate                  run every test, with the C++ mirror of the host's cross-entropy
//                            launch configurations
//   emulate --queries        print the cross-entropy launches the tests need, one per line:
//                            `ce <classes> <elem_size> <smem_optin> <forward_only> <batch>`
//   emulate --launches FILE  run every test with the launches FILE gives (written by
//                            tests/kernels_emulated.rs from the crate's own `ce_launch`):
//                            `ce <classes> <elem_size> <smem_optin> <forward_only> <batch>
//                             <kernel> <group> <smem_slots> <grid> <block> <smem_bytes>`
//   (FILE also holds `bce <classes> <elem_size> <batch> <kernel> <group> <grid> <block>`
//    lines, and --queries lists `bce <classes> <elem_size> <batch>` after the ce lines)
//   --only engine|mix|ce|bce|naive  run one group
// Prints "N passed, M failed" last; exits 1 on any failure.
#include "check.h"

#include <chrono>
#include <fstream>
#include <sstream>

int g_passed = 0, g_failed = 0;
bool g_list_queries = false;
std::map<CeKey, CeLaunch> g_ce_table;
std::vector<CeKey> g_ce_queries;
std::map<BceKey, BceHostLaunch> g_bce_table;
std::vector<BceKey> g_bce_queries;

namespace {

uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

uint32_t threads_for(uint64_t slots, uint64_t per_thread) {
    const uint64_t t = ceil_div(ceil_div(slots, per_thread), 32) * 32;
    return (uint32_t)std::min<uint64_t>(std::max<uint64_t>(t, 64), 1024);
}

bool load_table(const char* path) {
    std::ifstream in(path);
    if (!in) {
        std::fprintf(stderr, "cannot read %s\n", path);
        return false;
    }
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream s(line);
        std::string tag;
        CeKey k{};
        CeLaunch v;
        if (!(s >> tag)) continue;
        if (tag == "bce") {
            BceKey b{};
            BceHostLaunch h;
            if (!(s >> b.classes >> b.elem_size >> b.batch >> h.kernel >> h.group >> h.grid >> h.block)) {
                std::fprintf(stderr, "bad line in %s: %s\n", path, line.c_str());
                return false;
            }
            g_bce_table[b] = h;
            continue;
        }
        if (tag != "ce") continue;
        if (!(s >> k.classes >> k.elem_size >> k.smem_optin >> k.forward_only >> k.batch >> v.kernel >> v.group >>
              v.smem_slots >> v.grid >> v.block >> v.smem)) {
            std::fprintf(stderr, "bad line in %s: %s\n", path, line.c_str());
            return false;
        }
        g_ce_table[k] = v;
    }
    return true;
}

}  // namespace

// A mirror of src/cuda/mixup_ce.rs `ce_strategy` + `launch_config`, used only when no table
// from the crate is given (scripts/emulate.sh run by hand); tests/kernels_emulated.rs always
// passes the crate's own configurations, and reports where this mirror differs from them.
CeLaunch ce_launch_mirror(const CeKey& k) {
    const uint64_t K = 4, U = 4, ve = 16 / (uint64_t)k.elem_size, slots = k.classes / ve;
    CeLaunch c;
    uint64_t rows_per_block = 1;
    if (slots <= 32 * K) {
        uint64_t g = std::max<uint64_t>(ceil_div(slots, K), 1), p = 1;
        while (p < g) p <<= 1;
        c.kernel = "ce_warp";
        c.group = (uint32_t)p;
        c.block = 256;
        rows_per_block = 256 / p;
    } else if (k.forward_only) {
        c.kernel = "ce_online";
        c.block = threads_for(slots, U);
    } else {
        const uint32_t t = threads_for(slots, K);
        c.kernel = "ce_block";
        c.block = t;
        if ((uint64_t)t * K < slots) {
            const uint64_t s = ceil_div(slots - 1024 * K, 1024);
            const uint64_t avail = k.smem_optin > 2048 ? k.smem_optin - 2048 : 0;
            if (s * 1024 * 16 <= avail) {
                c.smem_slots = (uint32_t)s;
                c.smem = (uint32_t)(s * 1024 * 16);
            } else {
                c.kernel = "ce_online";
            }
        }
    }
    c.grid = (uint32_t)std::min<uint64_t>(std::max<uint64_t>(ceil_div(k.batch, rows_per_block), 1), (1ull << 31) - 1);
    return c;
}

int main(int argc, char** argv) {
    std::string only;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--queries") {
            g_list_queries = true;
        } else if (a == "--launches" && i + 1 < argc) {
            if (!load_table(argv[++i])) return 2;
        } else if (a == "--only" && i + 1 < argc) {
            only = argv[++i];
        } else {
            std::fprintf(stderr, "usage: %s [--queries | --launches FILE] [--only engine|mix|ce|bce|naive]\n", argv[0]);
            return 2;
        }
    }
    if (g_list_queries) {
        test_mixup_ce();
        std::sort(g_ce_queries.begin(), g_ce_queries.end());
        g_ce_queries.erase(std::unique(g_ce_queries.begin(), g_ce_queries.end(),
                                       [](const CeKey& a, const CeKey& b) { return !(a < b) && !(b < a); }),
                           g_ce_queries.end());
        for (const CeKey& k : g_ce_queries)
            std::printf("ce %llu %d %u %d %llu\n", (unsigned long long)k.classes, k.elem_size, k.smem_optin,
                        k.forward_only, (unsigned long long)k.batch);
        test_mixup_bce();
        std::sort(g_bce_queries.begin(), g_bce_queries.end());
        g_bce_queries.erase(std::unique(g_bce_queries.begin(), g_bce_queries.end(),
                                        [](const BceKey& a, const BceKey& b) { return !(a < b) && !(b < a); }),
                            g_bce_queries.end());
        for (const BceKey& k : g_bce_queries)
            std::printf("bce %llu %d %llu\n", (unsigned long long)k.classes, k.elem_size, (unsigned long long)k.batch);
        return 0;
    }
    if (g_ce_table.empty()) {
        std::printf("cross-entropy launches: the C++ mirror of the host's (no table from the crate)\n");
    } else {
        int differ = 0;
        for (const auto& [k, v] : g_ce_table) {
            const CeLaunch m = ce_launch_mirror(k);
            if (m.kernel != v.kernel || m.group != v.group || m.smem_slots != v.smem_slots || m.grid != v.grid ||
                m.block != v.block || m.smem != v.smem)
                ++differ;
        }
        std::printf("cross-entropy launches: %zu from the crate; binary cross-entropy: %zu\n", g_ce_table.size(),
                    g_bce_table.size());
        if (differ > 0)
            std::printf("note: ce_launch_mirror (kernels/emu/main.cpp, used when the emulator runs on its own) "
                        "differs from the crate on %d of them: update it\n",
                        differ);
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto lap = [&](const char* what, void (*f)()) {
        if (!only.empty() && only != what) return;
        const auto a = std::chrono::steady_clock::now();
        const int p = g_passed, q = g_failed;
        f();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
        std::printf("%-6s %6d checks passed, %d failed, %.1f s\n", what, g_passed - p, g_failed - q, s);
        std::fflush(stdout);
    };
    lap("engine", test_engine);
    lap("mix", test_mix_and_soft_targets);
    lap("ce", test_mixup_ce);
    lap("bce", test_mixup_bce);
    lap("naive", test_naive);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("total %.1f s\n%d passed, %d failed\n", s, g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
