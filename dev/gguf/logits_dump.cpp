// llama.cpp's logits at every position of a token sequence, as raw little-endian f32
// [positions × vocab] in OUT (kiln's twin: crates/kiln-engine/examples/gguf_logits.rs;
// dev/gguf/qwen-vs-llama-cpp.sh compares the two). The ids are given, not tokenized, so the
// forward passes are compared alone; the whole sequence is one batch with every output kept,
// on the library's default context (f16 KV cache, flash attention on the cpu when available).
// build: g++ -O2 -std=c++17 logits_dump.cpp -I$SRC/include -I$SRC/ggml/include -L$BIN -lllama -lggml -lggml-base -Wl,-rpath,$BIN
// usage: logits_dump MODEL.gguf THREADS IDS(comma-separated) OUT.f32
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

static void quiet(enum ggml_log_level, const char *, void *) {}

int main(int argc, char ** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL.gguf THREADS IDS OUT.f32\n", argv[0]);
        return 2;
    }
    const int threads = atoi(argv[2]);
    std::vector<llama_token> toks;
    std::stringstream ss(argv[3]);
    for (std::string id; std::getline(ss, id, ',');) toks.push_back(atoi(id.c_str()));
    const int n = toks.size();
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n + 16;
    cp.n_batch = n > 512 ? n : 512;
    cp.n_ubatch = cp.n_batch;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create a context\n"); return 1; }
    llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        batch.token[i] = toks[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch)) { fprintf(stderr, "decode failed\n"); return 1; }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    FILE * out = fopen(argv[4], "wb");
    for (int i = 0; i < n; i++) fwrite(llama_get_logits_ith(ctx, i), sizeof(float), n_vocab, out);
    fclose(out);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
