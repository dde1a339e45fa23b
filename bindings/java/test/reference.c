/* The sequence of BindingTest.java's personalization, through the C API, printing the same
 * key=value lines: BindingTest runs this program and requires its own lines to be identical
 * (doubles printed with %.17g, i.e. the same bits; texts byte for byte).
 *
 * usage: reference MODEL */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nudge.h"

#define TRY(call)                                                                                  \
    do {                                                                                           \
        NudgeStatus s_ = (call);                                                                   \
        if (s_ != NUDGE_OK) {                                                                      \
            fprintf(stderr, "reference: %s: %s: %s\n", #call, nudge_status_name((int32_t)s_),       \
                    nudge_last_error_message());                                                   \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* The data, the options and the seeds: the same as BindingTest.java's. */
enum { THREADS = 1 };
static const char *const PROMPTS[] = {
    "What is the capital of France?", "Name a primary color.", "How many legs does a cat have?",
    "Qu'est-ce qu'une cr\xc3\xa8me br\xc3\xbbl\xc3\xa9" "e ? \xf0\x9f\x8d\xae", "Say hello.", "What color is the sky?",
};
static const char *const GOOD[] = {
    "The capital of France is Paris.", "Red is a primary color.", "A cat has four legs.",
    "Un dessert \xc3\xa0 la cr\xc3\xa8me, caram\xc3\xa9lis\xc3\xa9 dessus.", "Hello! How can I help?", "The sky is blue.",
};
static const char *const BAD[] = {
    "idk, look it up yourself", "whatever, colors are boring", "Why do you care?",
    "Aucune id\xc3\xa9" "e \xf0\x9f\xa4\xb7", "No.", "Go outside and look.",
};
static const char *const UNICODE_TEXT = "Cr\xc3\xa8me br\xc3\xbbl\xc3\xa9" "e, \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e and emoji \xf0\x9f\x99\x82!";
static const char *const SECRET = "My password is hunter2.";
static const char *const GEN_PROMPT = "The capital of France is";
static const char *const CHAT_PROMPT = "[{\"role\": \"user\", \"content\": \"Say hello.\"}]";
static const char *const CHAT_ANSWER = "[{\"role\": \"assistant\", \"content\": \"Hello! How can I help?\"}]";

/* Bytes as they are when printable ASCII, else \xHH: lines stay ASCII and exact. */
static void put_text(const char *key, const char *s) {
    printf("%s=\"", key);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p >= 0x20 && *p < 0x7f && *p != '\\' && *p != '"') {
            putchar(*p);
        } else {
            printf("\\x%02x", *p);
        }
    }
    printf("\"");
}

typedef struct Steps {
    uint32_t stop_after; /* 0: never */
} Steps;

static int32_t on_step(const NudgeStepMetrics *m, void *user) {
    const Steps *s = (const Steps *)user;
    printf("step=%u total=%u skipped=%u loss=%.17g grad_norm=%.17g lr=%.17g chosen=%.17g rejected=%.17g "
           "margins=%.17g accuracies=%.17g has_kl=%u kl=%.17g pair_tokens=%llu\n",
           m->step, m->total_steps, m->skipped, m->loss, m->grad_norm, m->learning_rate, m->rewards_chosen,
           m->rewards_rejected, m->rewards_margins, m->rewards_accuracies, m->has_kl, m->kl,
           (unsigned long long)m->pair_tokens);
    return s->stop_after != 0 && m->step >= s->stop_after;
}

static void print_result(const NudgeTrainResult *r) {
    printf("train steps=%u skipped=%u cancelled=%u dropped=%u last_loss=%.17g\n", r->steps, r->skipped_steps,
           r->cancelled, r->dropped_examples, r->last.loss);
}

typedef struct Stream {
    char text[8192];
    size_t len;
    uint32_t pieces;
    uint32_t stop_after; /* 0: never */
    char ids[8192];
    char third[64]; /* the first non-empty piece from the third on: a stop string */
} Stream;

static int32_t on_token(uint32_t id, const char *text, size_t len, void *user) {
    Stream *s = (Stream *)user;
    if (s->len + len >= sizeof s->text || strlen(s->ids) + 16 >= sizeof s->ids) {
        fprintf(stderr, "reference: reply too long\n");
        exit(1);
    }
    memcpy(s->text + s->len, text, len);
    s->len += len;
    s->text[s->len] = '\0';
    snprintf(s->ids + strlen(s->ids), sizeof s->ids - strlen(s->ids), "%s%u", s->pieces ? "," : "", id);
    if (s->pieces >= 2 && s->third[0] == '\0' && len > 0 && len < sizeof s->third) {
        memcpy(s->third, text, len + 1);
    }
    s->pieces++;
    return s->stop_after != 0 && s->pieces >= s->stop_after;
}

/* Prints a streamed reply (text NULL: the call failed). */
static void print_reply(const char *what, const char *name, const Stream *s, const char *text, uint32_t reason) {
    if (strcmp(text, s->text) != 0) {
        fprintf(stderr, "reference: the streamed pieces differ from the reply\n");
        exit(1);
    }
    printf("%s %s stop=%u pieces=%u ids=%s ", what, name, reason, s->pieces, s->ids);
    put_text("text", text);
    printf("\n");
}

static Stream generate(const char *name, const NudgeModel *m, const NudgeAdapter *a, const NudgeGenerateOptions *o,
                       uint32_t stop_after) {
    Stream s;
    memset(&s, 0, sizeof s);
    s.stop_after = stop_after;
    char *text = NULL;
    uint32_t reason = 99;
    TRY(nudge_generate(m, a, GEN_PROMPT, NUDGE_TEXT, o, on_token, &s, &text, &reason));
    print_reply("generate", name, &s, text, reason);
    nudge_string_free(text);
    return s;
}

/* Replies of a batch: 2 prompts x 2 samples; reply (1, 0) is stopped after two pieces. */
typedef struct Batch {
    Stream replies[4];
} Batch;

static int32_t on_batch_token(size_t prompt, uint32_t sample, uint32_t id, const char *text, size_t len, void *user) {
    Stream *s = &((Batch *)user)->replies[prompt * 2 + sample];
    on_token(id, text, len, s);
    return prompt == 1 && sample == 0 && s->pieces >= 2 ? NUDGE_BATCH_STOP_REPLY : NUDGE_BATCH_CONTINUE;
}

static void generate_batch(const NudgeModel *m, const NudgeAdapter *a) {
    const char *prompts[] = {GEN_PROMPT, PROMPTS[4]};
    NudgeGenerateOptions o;
    TRY(nudge_generate_options_init(&o, sizeof o));
    o.max_new_tokens = 8;
    o.temperature = 0.8f;
    o.seed = 9;
    NudgeBatchOptions b;
    TRY(nudge_batch_options_init(&b, sizeof b));
    b.max_rows = 3;
    Batch batch;
    memset(&batch, 0, sizeof batch);
    char *texts[4];
    uint32_t reasons[4];
    TRY(nudge_generate_batch(m, a, prompts, 2, NUDGE_TEXT, 2, &o, &b, on_batch_token, &batch, texts, reasons));
    for (int i = 0; i < 4; i++) {
        char name[32];
        snprintf(name, sizeof name, "%d.%d", i / 2, i % 2);
        print_reply("batch", name, &batch.replies[i], texts[i], reasons[i]);
        nudge_string_free(texts[i]);
    }
}

static void send(NudgeSession *session, const char *name, const char *user_text, const NudgeGenerateOptions *o) {
    Stream s;
    memset(&s, 0, sizeof s);
    char *text = NULL;
    uint32_t reason = 99;
    TRY(nudge_session_send(session, user_text, o, on_token, &s, &text, &reason));
    print_reply("send", name, &s, text, reason);
    nudge_string_free(text);
    NudgeSessionInfo info;
    TRY(nudge_session_info_init(&info, sizeof info));
    TRY(nudge_session_info(session, &info));
    printf("session messages=%u cached=%llu reused=%llu cache_bytes=%llu\n", info.n_messages,
           (unsigned long long)info.cached_tokens, (unsigned long long)info.reused_tokens,
           (unsigned long long)info.cache_bytes);
}

static void print_stats(const char *name, const NudgeJournal *j) {
    NudgeJournalStats s;
    TRY(nudge_journal_stats_init(&s, sizeof s));
    TRY(nudge_journal_stats(j, &s));
    printf("journal %s records=%u thumbs=%u up=%u down=%u pairs=%u marks=%u new=%u next_seq=%llu forgotten=%llu "
           "trained_before=%d\n",
           name, s.records, s.thumbs, s.thumbs_up, s.thumbs_down, s.pairs, s.training_marks, s.new_since_training,
           (unsigned long long)s.next_sequence, (unsigned long long)s.forgotten, s.last_training_ms >= 0);
}

static int32_t on_event(const NudgeEvent *e, void *user) {
    (void)user;
    printf("event seq=%llu kind=%u format=%u up=%u new=%u strength=%.17g ", (unsigned long long)e->seq, e->kind,
           e->format, e->thumbs_up, e->is_new, (double)e->strength);
    put_text("id", e->id);
    printf(" ");
    put_text("prompt", e->prompt);
    printf(" ");
    put_text("completion", e->completion);
    printf(" ");
    put_text("rejected", e->rejected != NULL ? e->rejected : "(none)");
    printf("\n");
    return 0;
}

static void score(const char *name, const NudgeModel *m, const NudgeAdapter *a) {
    double chosen = 0, rejected = 0, chat = 0;
    uint32_t n = 0, n_chat = 0;
    TRY(nudge_score(m, a, PROMPTS[0], GOOD[0], NUDGE_TEXT, &chosen, &n));
    TRY(nudge_score(m, a, PROMPTS[0], BAD[0], NUDGE_TEXT, &rejected, NULL));
    TRY(nudge_score(m, a, CHAT_PROMPT, CHAT_ANSWER, NUDGE_CHAT_JSON, &chat, &n_chat));
    printf("score %s chosen=%.17g rejected=%.17g chosen_tokens=%u chat=%.17g chat_tokens=%u\n", name, chosen, rejected,
           n, chat, n_chat);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL\n", argv[0]);
        return 2;
    }
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/nudge-ref-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    size_t live_start = nudge_live_handles();
    printf("version=%s\n", nudge_version_string());

    NudgeModelOptions mo;
    TRY(nudge_model_options_init(&mo, sizeof mo));
    mo.threads = THREADS;
    NudgeModel *model = NULL;
    TRY(nudge_model_open(argv[1], &mo, &model));
    NudgeModelInfo info;
    TRY(nudge_model_info_init(&info, sizeof info));
    TRY(nudge_model_info(model, &info));
    printf("model architecture=%s gguf=%d vocab=%u hidden=%u intermediate=%u layers=%u heads=%u kv_heads=%u "
           "head_dim=%u context=%u chat_template=%u bos=%d eos=%d threads=%u\n",
           info.architecture, info.format == NUDGE_MODEL_GGUF, info.vocab_size, info.hidden_size,
           info.intermediate_size, info.num_layers, info.num_attention_heads, info.num_key_value_heads, info.head_dim,
           info.context_length, info.has_chat_template, info.bos_token_id, info.eos_token_id, info.threads);

    /* Tokens of a text beyond ASCII and beyond the BMP, and the text back. */
    size_t n = 0;
    TRY(nudge_tokenize(model, UNICODE_TEXT, NUDGE_TEXT, NULL, 0, &n));
    uint32_t *ids = malloc(n * sizeof *ids);
    TRY(nudge_tokenize(model, UNICODE_TEXT, NUDGE_TEXT, ids, n, &n));
    printf("tokens n=%zu ids=", n);
    for (size_t i = 0; i < n; i++) {
        printf("%s%u", i ? "," : "", ids[i]);
    }
    char *back = NULL;
    TRY(nudge_detokenize(model, ids, n, 1, &back));
    printf(" ");
    put_text("detokenized", back);
    printf("\n");
    nudge_string_free(back);
    free(ids);

    NudgeAdapterOptions ao;
    TRY(nudge_adapter_options_init(&ao, sizeof ao));
    ao.r = 4;
    ao.alpha = 8.0f;
    ao.seed = 7;
    NudgeAdapter *adapter = NULL;
    TRY(nudge_adapter_new(model, &ao, &adapter));
    NudgeAdapterInfo ai;
    TRY(nudge_adapter_info_init(&ai, sizeof ai));
    TRY(nudge_adapter_info(adapter, &ai));
    printf("adapter rank=%u alpha=%.17g targets=%u rslora=%u params=%llu\n", ai.r, (double)ai.alpha, ai.targets,
           ai.rslora, (unsigned long long)ai.n_params);

    /* Feedback: thumbs up and down on four prompts, a pair, a retry, a lone thumb that is
     * forgotten by number, a secret forgotten by prompt. */
    snprintf(path, sizeof path, "%s/feedback.journal", dir);
    NudgeJournal *journal = NULL;
    TRY(nudge_journal_open(path, NULL, &journal));
    char id[64];
    for (int i = 0; i < 4; i++) {
        snprintf(id, sizeof id, "t%d-up", i);
        TRY(nudge_journal_add_thumb(journal, id, PROMPTS[i], GOOD[i], NUDGE_TEXT, 1, NAN, NULL));
        snprintf(id, sizeof id, "t%d-down", i);
        TRY(nudge_journal_add_thumb(journal, id, PROMPTS[i], BAD[i], NUDGE_TEXT, 0, NAN, NULL));
    }
    TRY(nudge_journal_add_pair(journal, "p4", PROMPTS[4], GOOD[4], BAD[4], NUDGE_TEXT, 2.0f, NULL));
    TRY(nudge_journal_add_thumb(journal, "t0-up", PROMPTS[0], GOOD[0], NUDGE_TEXT, 1, NAN, NULL));
    uint64_t lone = 0;
    TRY(nudge_journal_add_thumb(journal, "lone", PROMPTS[5], GOOD[5], NUDGE_TEXT, 1, 0.5f, &lone));
    TRY(nudge_journal_add_thumb(journal, "secret", SECRET, "Noted.", NUDGE_TEXT, 1, NAN, NULL));
    print_stats("recorded", journal);
    size_t forgotten = 0, by_prompt = 0;
    TRY(nudge_journal_forget(journal, &lone, 1, &forgotten));
    TRY(nudge_journal_forget_prompt(journal, SECRET, NUDGE_TEXT, &by_prompt));
    printf("forgot lone=%llu by_number=%zu by_prompt=%zu\n", (unsigned long long)lone, forgotten, by_prompt);
    print_stats("forgot", journal);
    TRY(nudge_journal_compact(journal, 0));
    print_stats("compacted", journal);
    TRY(nudge_journal_list(journal, on_event, NULL));

    NudgeDataset *pairs = NULL;
    size_t n_pairs = 0, n_thumbs = 0;
    TRY(nudge_dataset_new(&pairs));
    TRY(nudge_dataset_add_journal(pairs, journal, NULL, &n_pairs, &n_thumbs));
    printf("dataset pairs=%zu thumbs=%zu\n", n_pairs, n_thumbs);

    score("base", model, adapter);

    /* DPO on the pairs, a few steps. */
    NudgeTrainOptions to;
    TRY(nudge_train_options_init(&to, sizeof to));
    to.loss = "sigmoid";
    to.learning_rate = 5e-3;
    to.beta = 0.1;
    to.max_steps = 3;
    to.batch_pairs = 2;
    to.seed = 11;
    to.threads = THREADS;
    NudgeTrainResult r;
    TRY(nudge_train_result_init(&r, sizeof r));
    Steps steps = {0};
    TRY(nudge_train(adapter, pairs, &to, on_step, &steps, &r));
    print_result(&r);
    TRY(nudge_journal_mark_trained(journal, pairs));
    print_stats("trained", journal);
    score("trained", model, adapter);

    /* KTO on every thumb, stopped by the listener after two of four steps. */
    NudgeJournalDataOptions dopt;
    TRY(nudge_journal_data_options_init(&dopt, sizeof dopt));
    dopt.only_new = 0;
    dopt.target = NUDGE_JOURNAL_THUMBS;
    NudgeDataset *thumbs = NULL;
    TRY(nudge_dataset_new(&thumbs));
    TRY(nudge_dataset_add_journal(thumbs, journal, &dopt, &n_pairs, &n_thumbs));
    printf("dataset pairs=%zu thumbs=%zu\n", n_pairs, n_thumbs);
    TRY(nudge_train_options_init(&to, sizeof to));
    to.loss = "kto";
    to.learning_rate = 5e-3;
    to.max_steps = 4;
    to.batch_pairs = 2;
    to.seed = 3;
    to.threads = THREADS;
    TRY(nudge_train_result_init(&r, sizeof r));
    steps.stop_after = 2;
    NudgeStatus st = nudge_train(adapter, thumbs, &to, on_step, &steps, &r);
    if (st != NUDGE_ERR_CANCELLED) {
        fprintf(stderr, "reference: the stopped run returned %s\n", nudge_status_name((int32_t)st));
        return 1;
    }
    print_result(&r);
    score("final", model, adapter);

    /* Replies: greedy with and without the adapter, sampled, stopped by the callback. */
    NudgeGenerateOptions go;
    TRY(nudge_generate_options_init(&go, sizeof go));
    go.max_new_tokens = 12;
    Stream greedy = generate("greedy", model, adapter, &go, 0);
    generate("base", model, NULL, &go, 0);
    generate("stopped", model, adapter, &go, 3);
    const char *stops[] = {greedy.third};
    NudgeGenerateOptions at_string = go;
    at_string.stop_strings = stops;
    at_string.n_stop_strings = 1;
    printf("stop_string ");
    put_text("s", greedy.third);
    printf("\n");
    generate("stop_string", model, adapter, &at_string, 0);
    go.temperature = 0.8f;
    go.top_k = 40;
    go.top_p = 0.9f;
    go.seed = 5;
    generate("sampled", model, adapter, &go, 0);
    generate_batch(model, adapter);

    /* Saved and loaded back: the same scores. */
    snprintf(path, sizeof path, "%s/peft", dir);
    TRY(nudge_adapter_save_peft(adapter, path));
    NudgeAdapter *loaded = NULL;
    TRY(nudge_adapter_load(model, path, &loaded));
    score("loaded", model, loaded);
    snprintf(path, sizeof path, "%s/adapter.gguf", dir);
    TRY(nudge_adapter_save_gguf(adapter, path, NUDGE_DTYPE_F16));
    printf("saved gguf=%d\n", access(path, R_OK) == 0);

    /* A copy, a stack, a swap. */
    NudgeAdapter *copy = NULL, *fresh = NULL, *stacked = NULL;
    TRY(nudge_adapter_clone(adapter, &copy));
    score("copy", model, copy);
    const NudgeAdapter *both[] = {adapter, loaded};
    const float weights[] = {0.5f, 0.25f};
    TRY(nudge_adapter_stack(both, weights, 2, &stacked));
    score("stacked", model, stacked);
    TRY(nudge_adapter_new(model, &ao, &fresh));
    TRY(nudge_adapter_swap(copy, fresh));
    score("swapped_copy", model, copy);
    score("swapped_fresh", model, fresh);

    /* A chat session with the trained adapter. */
    NudgeSession *session = NULL;
    TRY(nudge_session_new(model, adapter, "You are terse.", &session));
    NudgeGenerateOptions so;
    TRY(nudge_generate_options_init(&so, sizeof so));
    so.max_new_tokens = 8;
    send(session, "first", "What is the capital of France?", &so);
    send(session, "second", "And of Italy?", &so);
    char *json = NULL;
    TRY(nudge_session_messages(session, &json));
    put_text("messages", json);
    printf("\n");
    nudge_string_free(json);
    size_t n_vocab = 0;
    TRY(nudge_session_logits(session, NULL, 0, &n_vocab));
    float *logits = malloc(n_vocab * sizeof *logits);
    TRY(nudge_session_logits(session, logits, n_vocab, &n_vocab));
    size_t best = 0;
    for (size_t i = 1; i < n_vocab; i++) {
        best = logits[i] > logits[best] ? i : best;
    }
    printf("logits n=%zu first=%.17g last=%.17g argmax=%zu max=%.17g\n", n_vocab, (double)logits[0],
           (double)logits[n_vocab - 1], best, (double)logits[best]);
    free(logits);
    TRY(nudge_session_rollback(session, 1));
    TRY(nudge_session_add(session, "user", "Say hello."));
    send(session, "regenerated", NULL, &so);
    TRY(nudge_session_truncate(session, 1));
    send(session, "after_truncate", "Hi!", &so);
    nudge_session_free(session);

    nudge_adapter_free(stacked);
    nudge_adapter_free(fresh);
    nudge_adapter_free(copy);
    nudge_adapter_free(loaded);
    nudge_dataset_free(thumbs);
    nudge_dataset_free(pairs);
    nudge_journal_free(journal);
    nudge_adapter_free(adapter);
    nudge_model_free(model);
    printf("live_handles_delta=%zu\n", nudge_live_handles() - live_start);

    /* The temporary files. */
    const char *const files[] = {"feedback.journal", "peft/adapter_config.json", "peft/adapter_model.safetensors",
                                 "adapter.gguf", "peft", ""};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        if (remove(path) != 0) {
            perror(path);
        }
    }
    return 0;
}
