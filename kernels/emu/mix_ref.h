// Plans and the expected result of mixing, of the naive
// (test_naive.cpp) mix tests. Include after kernels/common.cuh (PlanEntry).
#pragma once
#include "check.h"

struct Plan {
    std::vector<PlanEntry> e;
    bool involution = false;
};

inline Plan make_plan(const std::vector<u32>& partner, const std::vector<float>& lam,
                      const std::vector<int>& cut, u32 h, u32 w, std::mt19937& rng) {
    Plan p;
    for (size_t i = 0; i < partner.size(); ++i) {
        PlanEntry x{};
        x.partner = partner[i];
        x.lam = lam[i];
        if (cut[i] && h > 0) {
            x.cut = 1;
            x.y0 = rng() % h; x.y1 = x.y0 + rng() % (h - x.y0 + 1);
            x.x0 = rng() % w; x.x1 = x.x0 + rng() % (w - x.x0 + 1);
            if (i % 5 == 1) { x.y0 = 0; x.y1 = h; x.x0 = 0; x.x1 = w; }
        }
        p.e.push_back(x);
    }
    p.involution = true;
    for (size_t i = 0; i < partner.size(); ++i) p.involution &= partner[partner[i]] == i;
    return p;
}

// Entries, then the pair leaders packed 8 per entry (src/cuda/plan.rs `stage`).
inline std::vector<PlanEntry> staged(const Plan& p, u64& pairs) {
    std::vector<PlanEntry> out = p.e;
    std::vector<u32> lead;
    if (p.involution)
        for (u32 i = 0; i < p.e.size(); ++i)
            if (i <= p.e[i].partner) lead.push_back(i);
    pairs = lead.size();
    for (size_t k = 0; k < lead.size(); k += 8) {
        u32 w[8] = {0};
        for (size_t j = 0; j < 8 && k + j < lead.size(); ++j) w[j] = lead[k + j];
        PlanEntry x;
        memcpy(&x, w, 32);
        out.push_back(x);
    }
    return out;
}

// layout: 0 rows(len=d), 1 nchw, 2 nhwc
template <class H>
std::vector<typename H::B> expected_mix(const Plan& p, u32 layout, u64 d, u32 c, u32 h, u32 w,
                                               const std::vector<typename H::B>& x) {
    std::vector<typename H::B> out(x.size());
    for (size_t i = 0; i < p.e.size(); ++i) {
        const PlanEntry& e = p.e[i];
        for (u64 k = 0; k < d; ++k) {
            auto a = x[i * d + k], b = x[(u64)e.partner * d + k];
            if (e.cut && layout != 0) {
                u64 pix = layout == 1 ? k % ((u64)h * w) : k / c;
                u64 y = pix / w, xx = pix % w;
                bool in = y >= e.y0 && y < e.y1 && xx >= e.x0 && xx < e.x1;
                out[i * d + k] = in ? b : a;
            } else {
                volatile float lam = e.lam;
                float mu = 1.0f - lam;
                float v = lam * H::f(a) + mu * H::f(b);
                out[i * d + k] = H::r(v);
            }
        }
    }
    return out;
}

