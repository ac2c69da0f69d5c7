// llama.cpp's greedy continuation of a prompt, one JSON line in the format of kiln's
// `gguf_greedy` example: the prompt's ids (llama_tokenize with add_special and parse_special, as
// llama-completion) and per step the argmax id and logit and the runner-up's id and logit.
// Temperature 0 in llama-completion is this argmax; the context is the library's default one
// (f16 KV cache, flash attention on the cpu when available), prompt in one batch, then one token
// per decode call.
// build: g++ -O2 -std=c++17 greedy_top2.cpp -I$SRC/include -I$SRC/ggml/include -L$BIN -lllama -lggml -lggml-base -Wl,-rpath,$BIN
// usage: greedy_top2 MODEL.gguf N_TOKENS THREADS PROMPT
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static void quiet(enum ggml_log_level, const char *, void *) {}

int main(int argc, char ** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL.gguf N_TOKENS THREADS PROMPT\n", argv[0]);
        return 2;
    }
    const int n_predict = atoi(argv[2]);
    const int threads = atoi(argv[3]);
    const std::string prompt = argv[4];
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_prompt = -llama_tokenize(vocab, prompt.c_str(), prompt.size(), nullptr, 0, true, true);
    std::vector<llama_token> toks(n_prompt);
    llama_tokenize(vocab, prompt.c_str(), prompt.size(), toks.data(), n_prompt, true, true);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_prompt + n_predict + 16;
    cp.n_batch = n_prompt > 512 ? n_prompt : 512;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create a context\n"); return 1; }
    printf("{\"prompt\":[");
    for (int i = 0; i < n_prompt; i++) printf("%s%d", i ? "," : "", toks[i]);
    printf("],\"steps\":[");
    if (llama_decode(ctx, llama_batch_get_one(toks.data(), n_prompt))) { fprintf(stderr, "decode failed\n"); return 1; }
    const int n_vocab = llama_vocab_n_tokens(vocab);
    for (int i = 0; i < n_predict; i++) {
        const float * lg = llama_get_logits_ith(ctx, -1);
        int top = 0, second = 1;
        if (lg[second] > lg[top]) { top = 1; second = 0; }
        for (int j = 2; j < n_vocab; j++) {
            if (lg[j] > lg[top]) { second = top; top = j; }
            else if (lg[j] > lg[second]) { second = j; }
        }
        printf("%s[%d,%.9g,%d,%.9g]", i ? "," : "", top, lg[top], second, lg[second]);
        if (llama_vocab_is_eog(vocab, top) || i + 1 == n_predict) break;
        llama_token t = top;
        if (llama_decode(ctx, llama_batch_get_one(&t, 1))) { fprintf(stderr, "decode failed\n"); return 1; }
    }
    printf("]}\n");
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
