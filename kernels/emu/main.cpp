// The host emulation of the kernels (scripts/emulate.sh builds and runs it).
//
//   emulate                          the engine's own tests
//   emulate --cases FILE --out FILE  also runs every launch of FILE (written by
//                                    tests/kernels_emulated from the crate's host code) and
//                                    writes what each produced to the --out file
//   --only engine|cases        one group
//
// The cases carry everything: the entry, grid, block, dynamic shared memory, the argument
// struct's bytes, the buffers' initial bytes, where in the arguments each buffer's address
// goes, and the block / thread orders to run it in. This side knows no launch rule and no
// expected value: it runs the kernel in the engine and writes back the buffers the case asks
// for; tests/kernels_emulated compares them with `mixup_kernels::reference`.
//
// Cases file (little endian):   "MXEMUCS1" u64 cases, then per case:
//   u32 len, entry name; u32 len, description; u32 grid, block, smem;
//   u32 runs, per run: u32 block_order, u32 thread_order, u64 seed;
//   u32 len, argument bytes; u32 buffers, per buffer: u32 returned, u64 len, bytes;
//   u32 patches, per patch: u32 argument offset, u32 buffer, u64 byte offset (the 8 bytes at
//   that offset of the arguments become the buffer's address plus the offset).
// Output file: "MXEMUOU1" u64 cases, then per case and run: u32 ok (the launch kept the
//   barrier and shuffle rules), then each returned buffer's bytes.
// Prints "N passed, M failed" last (the engine's checks, and one per launch that
// broke a rule or could not run); exits 1 on any failure.
#include "check.h"
#include "entries.h"

#include <chrono>
#include <fstream>

int g_passed = 0, g_failed = 0;

namespace {

struct Reader {
    std::ifstream in;
    bool ok = true;
    template <class T>
    T get() {
        T v{};
        ok = ok && (bool)in.read((char*)&v, sizeof v);
        return v;
    }
    std::string bytes(size_t n) {
        std::string s(n, '\0');
        ok = ok && (n == 0 || (bool)in.read(&s[0], (std::streamsize)n));
        return s;
    }
};

// Runs every case of `path`, writing the outputs to `out_path`. False if a file is unreadable.
bool run_cases(const char* path, const char* out_path) {
    Reader r;
    r.in.open(path, std::ios::binary);
    std::ofstream out(out_path, std::ios::binary);
    if (!r.in || !out) {
        std::fprintf(stderr, "cannot open %s or %s\n", path, out_path);
        return false;
    }
    if (r.bytes(8) != "MXEMUCS1") {
        std::fprintf(stderr, "%s is not a cases file\n", path);
        return false;
    }
    const uint64_t n = r.get<uint64_t>();
    out.write("MXEMUOU1", 8);
    out.write((const char*)&n, 8);
    int broke = 0;
    for (uint64_t c = 0; c < n && r.ok; ++c) {
        const std::string entry = r.bytes(r.get<uint32_t>());
        const std::string what = r.bytes(r.get<uint32_t>());
        emu::Launch l;
        l.grid = r.get<uint32_t>();
        l.block = r.get<uint32_t>();
        l.smem = r.get<uint32_t>();
        struct Order {
            uint32_t block, thread;
            uint64_t seed;
        };
        std::vector<Order> runs(r.get<uint32_t>());
        for (Order& o : runs) o = {r.get<uint32_t>(), r.get<uint32_t>(), r.get<uint64_t>()};
        const std::string args = r.bytes(r.get<uint32_t>());
        struct Buffer {
            uint32_t returned;
            std::string init;
        };
        std::vector<Buffer> bufs(r.get<uint32_t>());
        for (Buffer& b : bufs) {
            b.returned = r.get<uint32_t>();
            b.init = r.bytes(r.get<uint64_t>());
        }
        struct Patch {
            uint32_t at, buf;
            uint64_t off;
        };
        std::vector<Patch> patches(r.get<uint32_t>());
        for (Patch& p : patches) p = {r.get<uint32_t>(), r.get<uint32_t>(), r.get<uint64_t>()};
        if (!r.ok) break;
        const auto it = emu_entries().find(entry);
        const bool known = it != emu_entries().end() && it->second.args_size == args.size();
        check(known, what + ": no entry " + entry + fmt(" taking %zu bytes of arguments", args.size()));
        bool patches_ok = true;
        for (const Patch& p : patches) patches_ok &= p.buf < bufs.size() && p.at + 8 <= args.size();
        check(patches_ok, what + ": a patch outside the arguments or the buffers");
        const uint32_t nruns = (uint32_t)runs.size();
        out.write((const char*)&nruns, 4);
        for (const Order& o : runs) {
            // Exactly sized, 16-byte aligned buffers: ASan sees any access past one.
            std::vector<char*> mem(bufs.size());
            for (size_t b = 0; b < bufs.size(); ++b) {
                mem[b] = (char*)std::malloc(std::max<size_t>(1, bufs[b].init.size()));
                if (((uintptr_t)mem[b] & 15u) != 0) std::abort();
                std::memcpy(mem[b], bufs[b].init.data(), bufs[b].init.size());
            }
            std::string a = args;
            for (const Patch& p : patches_ok ? patches : std::vector<Patch>{}) {
                const uint64_t addr = (uint64_t)(uintptr_t)mem[p.buf] + p.off;
                std::memcpy(&a[p.at], &addr, 8);
            }
            l.block_order = (int)o.block;
            l.thread_order = (int)o.thread;
            l.seed = o.seed;
            uint32_t ok = 0;
            if (known && patches_ok) {
                const EmuEntry& e = it->second;
                ok = emu::launch(l, [&] { e.run(a.data()); }) ? 1 : 0;
                if (!ok) {
                    ++broke;
                    std::fprintf(stderr, "in %s (%s)\n", what.c_str(), entry.c_str());
                }
            }
            out.write((const char*)&ok, 4);
            for (size_t b = 0; b < bufs.size(); ++b) {
                if (bufs[b].returned) out.write(mem[b], (std::streamsize)bufs[b].init.size());
                std::free(mem[b]);
            }
        }
    }
    if (!r.ok) check(false, fmt("%s ends early", path));
    check(broke == 0, fmt("%d launches broke a barrier or shuffle rule (see EMU FAIL above)", broke));
    std::printf("cases  %llu run\n", (unsigned long long)n);
    return (bool)out;
}

}  // namespace

int main(int argc, char** argv) {
    std::string only;
    const char *cases = nullptr, *out = nullptr;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--cases" && i + 1 < argc) {
            cases = argv[++i];
        } else if (a == "--out" && i + 1 < argc) {
            out = argv[++i];
        } else if (a == "--only" && i + 1 < argc) {
            only = argv[++i];
        } else {
            std::fprintf(stderr, "usage: %s [--cases FILE --out FILE] [--only engine|cases]\n", argv[0]);
            return 2;
        }
    }
    if ((cases == nullptr) != (out == nullptr)) {
        std::fprintf(stderr, "--cases and --out go together\n");
        return 2;
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto lap = [&](const char* what, const std::function<void()>& f) {
        if (!only.empty() && only != what) return;
        const auto a = std::chrono::steady_clock::now();
        const int p = g_passed, q = g_failed;
        f();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
        std::printf("%-6s %6d checks passed, %d failed, %.1f s\n", what, g_passed - p, g_failed - q, s);
        std::fflush(stdout);
    };
    lap("engine", test_engine);
    bool files = true;
    if (cases != nullptr) lap("cases", [&] { files = run_cases(cases, out); });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("total %.1f s\n%d passed, %d failed\n", s, g_passed, g_failed);
    return g_failed == 0 && files ? 0 : 1;
}
