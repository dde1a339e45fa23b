/* Serving while personalizing, through the C API on the real model:
 * - a generation thread keeps answering with the serving adapter while a clone of it
 *   trains (never NUDGE_ERR_BUSY), then the two are swapped atomically;
 * - two stacked adapters equal the base with the first merged in plus the second;
 * - a three-turn chat session gives the logits of a fresh prefill of the whole chat;
 * - stop strings, a cancelled generation, and the errors of these calls.
 *
 * usage: serving MODEL */
#include "common.h"

#include <pthread.h>
#include <time.h>

/* Counters shared with the serving thread (the tests are C99: GCC's atomic builtins). */
#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_SEQ_CST)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_SEQ_CST)
#define ADD(x) __atomic_add_fetch(&(x), 1, __ATOMIC_SEQ_CST)

/* A millisecond's wait while another thread works. */
static void nap(void) {
    struct timespec t = {0, 1000000};
    nanosleep(&t, NULL);
}

/* The model the interrupting callbacks interrupt. */
static const NudgeModel *g_model;

static NudgeGenerateOptions short_reply(uint32_t max_new_tokens) {
    NudgeGenerateOptions o;
    CHECK_OK(nudge_generate_options_init(&o, sizeof o));
    o.max_new_tokens = max_new_tokens;
    o.threads = 1;
    return o;
}

static const char *const PROMPT = "[{\"role\": \"user\", \"content\": \"How many legs does a cat have?\"}]";
static const char *const ANSWER = "[{\"role\": \"assistant\", \"content\": \"A cat has four legs.\"}]";

static double score(const NudgeModel *m, const NudgeAdapter *a) {
    double logp = 0.0;
    CHECK_OK(nudge_score(m, a, PROMPT, ANSWER, NUDGE_CHAT_JSON, &logp, NULL));
    return logp;
}

/* ---- serving while a clone trains ---- */

typedef struct Server {
    const NudgeModel *model;
    NudgeAdapter *serving;
    int training; /* 1 while the clone trains */
    int during;   /* replies begun and completed while it trained */
    int stop;
    int replies;
    int failures;
} Server;

static void *serve(void *arg) {
    Server *s = (Server *)arg;
    NudgeGenerateOptions o = short_reply(6);
    while (!LOAD(s->stop)) {
        int was_training = LOAD(s->training);
        char *text = NULL;
        NudgeStatus st = nudge_generate(s->model, s->serving, PROMPT, NUDGE_CHAT_JSON, &o, NULL, NULL, &text, NULL);
        if (st != NUDGE_OK || text == NULL) {
            fprintf(stderr, "serving failed: %s: %s\n", nudge_status_name(st), nudge_last_error_message());
            ADD(s->failures);
        }
        nudge_string_free(text);
        ADD(s->replies);
        if (was_training && LOAD(s->training)) {
            ADD(s->during);
        }
    }
    return NULL;
}

typedef struct Gate {
    Server *server;
    NudgeAdapter *clone;
} Gate;

/* Holds training at its first step until the server has answered during it, and checks
 * that the adapter being trained cannot be swapped meanwhile. */
static int32_t hold_until_served(const NudgeStepMetrics *m, void *user) {
    Gate *g = (Gate *)user;
    if (m->step == 1) {
        CHECK_STATUS(nudge_adapter_swap(g->server->serving, g->clone), NUDGE_ERR_BUSY);
        CHECK_MESSAGE("in use");
        while (LOAD(g->server->during) < 2 && LOAD(g->server->failures) == 0) {
            nap();
        }
    }
    return 0;
}

static NudgeDataset *pairs(void) {
    NudgeDataset *d = NULL;
    CHECK_OK(nudge_dataset_new(&d));
    CHECK_OK(nudge_dataset_add_pairs(d, CHAT_PAIRS, COUNT(CHAT_PAIRS), NUDGE_CHAT_JSON));
    return d;
}

static void serve_while_a_clone_trains(const NudgeModel *m, NudgeAdapter *serving, NudgeAdapter **trained_out) {
    double before = score(m, serving);
    NudgeAdapter *clone = NULL;
    CHECK_OK(nudge_adapter_clone(serving, &clone));
    CHECK(clone != NULL && clone != serving);
    CHECK(score(m, clone) == before);

    Server s = {.model = m, .serving = serving};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, serve, &s) == 0);
    while (LOAD(s.replies) < 1) {
        nap();
    }
    NudgeDataset *d = pairs();
    NudgeTrainOptions o = quick_options(3);
    o.learning_rate = 1e-2;
    Gate g = {&s, clone};
    STORE(s.training, 1);
    CHECK_OK(nudge_train(clone, d, &o, hold_until_served, &g, NULL));
    STORE(s.training, 0);
    CHECK(LOAD(s.during) >= 2);
    /* The original served unchanged while its copy trained. */
    CHECK(score(m, serving) == before);
    double trained = score(m, clone);
    CHECK(trained != before);

    /* The swap, with the server still running: it never waits, nothing fails. */
    int replies_before_swap = LOAD(s.replies);
    CHECK_OK(nudge_adapter_swap(serving, clone));
    while (LOAD(s.replies) < replies_before_swap + 2) {
        nap();
    }
    STORE(s.stop, 1);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(LOAD(s.failures) == 0);
    CHECK(score(m, serving) == trained);
    CHECK(score(m, clone) == before);
    CHECK_OK(nudge_adapter_swap(serving, serving));
    printf("served=%d during_training=%d\n", LOAD(s.replies), LOAD(s.during));

    /* serving now holds the trained weights; clone the old ones. */
    *trained_out = clone;
    nudge_dataset_free(d);
}

/* ---- stacking ---- */

static void stacks_equal_merged_sums(const NudgeModel *m, NudgeAdapter *a1, NudgeAdapter *a2) {
    const NudgeAdapter *both[2] = {a1, a2};
    const float weights[2] = {0.5f, 1.0f};
    NudgeAdapter *stack = NULL;
    CHECK_OK(nudge_adapter_stack(both, weights, 2, &stack));
    NudgeAdapterInfo info;
    CHECK_OK(nudge_adapter_info_init(&info, sizeof info));
    CHECK_OK(nudge_adapter_info(stack, &info));
    NudgeAdapterInfo one;
    CHECK_OK(nudge_adapter_info_init(&one, sizeof one));
    CHECK_OK(nudge_adapter_info(a1, &one));
    CHECK(info.r == 2 * one.r);

    /* The reference: a1 at half strength merged into the weights, a2 applied on top. */
    const NudgeAdapter *first[1] = {a1};
    NudgeAdapter *half = NULL;
    CHECK_OK(nudge_adapter_stack(first, weights, 1, &half));
    char dir[4096];
    make_temp_dir(dir, sizeof dir);
    char merged[4200];
    snprintf(merged, sizeof merged, "%s/merged", dir);
    CHECK_OK(nudge_adapter_save_merged(half, merged, NUDGE_DTYPE_F32));
    NudgeModel *m1 = open_model(merged);
    double want = score(m1, a2);
    double got = score(m, stack);
    printf("stack=%.17g merged=%.17g a1=%.17g a2=%.17g base=%.17g\n", got, want, score(m, a1), score(m, a2),
           score(m, NULL));
    CHECK(fabs(got - want) < 1e-3 * fabs(want));
    CHECK(fabs(got - score(m, a2)) > 1e-3 && fabs(got - score(m, half)) > 1e-3);

    /* Weight 0 is the base model; NULL weights are 1 each. */
    const float zero[1] = {0.0f};
    NudgeAdapter *off = NULL;
    CHECK_OK(nudge_adapter_stack(first, zero, 1, &off));
    CHECK(score(m, off) == score(m, NULL));
    NudgeAdapter *plain = NULL;
    CHECK_OK(nudge_adapter_stack(first, NULL, 1, &plain));
    CHECK(fabs(score(m, plain) - score(m, a1)) < 1e-4);

    /* Errors name what is wrong and leave *out NULL. */
    NudgeAdapter *bad = (NudgeAdapter *)1;
    CHECK_STATUS(nudge_adapter_stack(both, weights, 0, &bad), NUDGE_ERR_INVALID);
    CHECK(bad == NULL);
    const float nan_weight[2] = {NAN, 1.0f};
    CHECK_STATUS(nudge_adapter_stack(both, nan_weight, 2, &bad), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("finite");
    const NudgeAdapter *dangling[2] = {a1, off};
    nudge_adapter_free(off);
    CHECK_STATUS(nudge_adapter_stack(dangling, NULL, 2, &bad), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("adapters[1]");

    nudge_adapter_free(plain);
    nudge_adapter_free(half);
    nudge_adapter_free(stack);
    nudge_model_free(m1);
    remove_adapter_dir(dir);
}

/* ---- sessions ---- */

static int32_t interrupt_after_two(uint32_t token, const char *text, size_t len, void *user) {
    (void)token, (void)text, (void)len;
    int *n = (int *)user;
    if (++*n == 2) {
        CHECK_OK(nudge_model_interrupt(g_model));
    }
    return 0;
}

typedef struct Streamed {
    char text[4096];
    size_t len;
} Streamed;

static int32_t collect(uint32_t token, const char *text, size_t len, void *user) {
    (void)token;
    Streamed *s = (Streamed *)user;
    CHECK(strlen(text) == len && s->len + len < sizeof s->text);
    memcpy(s->text + s->len, text, len + 1);
    s->len += len;
    return 0;
}

static void session_matches_a_fresh_prefill(const NudgeModel *m, NudgeAdapter *a) {
    static const char *const SYSTEM = "You are a terse assistant.";
    static const char *const TURNS[3] = {"Name a fruit.", "And a vegetable?", "Which is sweeter?"};
    NudgeSession *s = NULL;
    CHECK_OK(nudge_session_new(m, a, SYSTEM, &s));
    NudgeGenerateOptions o = short_reply(10);
    char *replies[3];
    for (int i = 0; i < 3; i++) {
        Streamed seen = {{0}, 0};
        uint32_t why = 99;
        CHECK_OK(nudge_session_send(s, TURNS[i], &o, collect, &seen, &replies[i], &why));
        CHECK(why == NUDGE_STOP_EOS || why == NUDGE_STOP_LENGTH);
        CHECK(strcmp(seen.text, replies[i]) == 0);
        NudgeSessionInfo info;
        CHECK_OK(nudge_session_info_init(&info, sizeof info));
        CHECK_OK(nudge_session_info(s, &info));
        CHECK(info.n_messages == (uint32_t)(2 * i + 3));
        CHECK(info.cached_tokens > 0 && info.cache_bytes > 0);
        if (i > 0) {
            CHECK(info.reused_tokens > 20); /* the earlier turns were not run again */
        }
        printf("turn=%d reused=%llu cached=%llu reply=%s\n", i, (unsigned long long)info.reused_tokens,
               (unsigned long long)info.cached_tokens, replies[i]);
    }
    size_t vocab = 0;
    CHECK_OK(nudge_session_logits(s, NULL, 0, &vocab));
    CHECK(vocab > 1000);
    float *got = calloc(vocab, sizeof *got);
    float *want = calloc(vocab, sizeof *want);
    CHECK(got != NULL && want != NULL);
    CHECK_STATUS(nudge_session_logits(s, got, vocab - 1, NULL), NUDGE_ERR_INVALID);
    CHECK_OK(nudge_session_logits(s, got, vocab, NULL));

    NudgeSession *fresh = NULL;
    CHECK_OK(nudge_session_new(m, a, SYSTEM, &fresh));
    for (int i = 0; i < 3; i++) {
        CHECK_OK(nudge_session_add(fresh, "user", TURNS[i]));
        CHECK_OK(nudge_session_add(fresh, "assistant", replies[i]));
    }
    CHECK_OK(nudge_session_logits(fresh, want, vocab, NULL));
    NudgeSessionInfo info;
    CHECK_OK(nudge_session_info_init(&info, sizeof info));
    CHECK_OK(nudge_session_info(fresh, &info));
    CHECK(info.reused_tokens == 0);
    CHECK(memcmp(got, want, vocab * sizeof *got) == 0);
    printf("session_logits_equal=1 vocab=%zu\n", vocab);

    /* The conversation as JSON; a rollback removes the last turn. */
    char *json = NULL;
    CHECK_OK(nudge_session_messages(s, &json));
    CHECK(strstr(json, "\"role\":\"system\"") != NULL && strstr(json, TURNS[2]) != NULL);
    nudge_string_free(json);
    CHECK_OK(nudge_session_rollback(s, 1));
    CHECK_OK(nudge_session_messages(s, &json));
    CHECK(strstr(json, TURNS[2]) == NULL && strstr(json, TURNS[1]) != NULL);
    nudge_string_free(json);
    CHECK_STATUS(nudge_session_rollback(s, 5), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("has 2");

    /* A cancelled reply leaves the conversation as it was. */
    g_model = m;
    int n = 0;
    char *text = (char *)1;
    CHECK_STATUS(nudge_session_send(s, "Tell me a long story.", &o, interrupt_after_two, &n, &text, NULL),
                 NUDGE_ERR_CANCELLED);
    CHECK(text == NULL && n == 2);
    CHECK_OK(nudge_session_info(s, &info));
    CHECK(info.n_messages == 5);
    /* ...and the next turn works (from the cache it still had, or a fresh prefill). */
    char *again = NULL;
    CHECK_OK(nudge_session_send(s, TURNS[2], &o, NULL, NULL, &again, NULL));
    CHECK(strcmp(again, replies[2]) == 0);
    nudge_string_free(again);

    /* Regenerate: drop the reply, answer the same user message again. */
    CHECK_OK(nudge_session_truncate(s, 6));
    CHECK_OK(nudge_session_send(s, NULL, &o, NULL, NULL, &again, NULL));
    CHECK(strcmp(again, replies[2]) == 0);
    nudge_string_free(again);

    for (int i = 0; i < 3; i++) {
        nudge_string_free(replies[i]);
    }
    free(got);
    free(want);
    nudge_session_free(fresh);
    nudge_session_free(s);
    nudge_session_free(s);
}

/* ---- stop strings and cancellation of a plain generation ---- */

static void stop_strings_and_cancellation(const NudgeModel *m) {
    static const char *const COUNTING = "[{\"role\": \"user\", \"content\": \"Count from one to ten in words.\"}]";
    NudgeGenerateOptions o = short_reply(40);
    char *full = NULL;
    CHECK_OK(nudge_generate(m, NULL, COUNTING, NUDGE_CHAT_JSON, &o, NULL, NULL, &full, NULL));
    /* The third word of the reply, with its leading space, as the stop string. */
    const char *p = full;
    for (int w = 0; w < 2; w++) {
        p = strchr(p + 1, ' ');
        CHECK(p != NULL);
    }
    const char *end = strchr(p + 1, ' ');
    size_t stop_len = end ? (size_t)(end - p) : strlen(p);
    char stop[64];
    CHECK(stop_len < sizeof stop);
    memcpy(stop, p, stop_len);
    stop[stop_len] = 0;
    const char *stops[2] = {"never in this reply", stop};
    o.stop_strings = stops;
    o.n_stop_strings = 2;
    Streamed seen = {{0}, 0};
    char *cut = NULL;
    uint32_t why = 99;
    CHECK_OK(nudge_generate(m, NULL, COUNTING, NUDGE_CHAT_JSON, &o, collect, &seen, &cut, &why));
    CHECK(why == NUDGE_STOP_STRING);
    size_t at = (size_t)(strstr(full, stop) - full);
    CHECK(strlen(cut) == at && strncmp(cut, full, at) == 0);
    CHECK(strcmp(seen.text, cut) == 0);
    printf("stop=\"%s\" cut=\"%s\"\n", stop, cut);
    const char *empty[1] = {""};
    o.stop_strings = empty;
    o.n_stop_strings = 1;
    CHECK_STATUS(nudge_generate(m, NULL, COUNTING, NUDGE_CHAT_JSON, &o, NULL, NULL, NULL, NULL), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("stop string 0 is empty");
    o.stop_strings = NULL;
    o.n_stop_strings = 1;
    CHECK_STATUS(nudge_generate(m, NULL, COUNTING, NUDGE_CHAT_JSON, &o, NULL, NULL, NULL, NULL), NUDGE_ERR_NULL);

    /* An interrupted generation ends with NUDGE_ERR_CANCELLED and no text. */
    g_model = m;
    int n = 0;
    char *text = (char *)1;
    NudgeGenerateOptions plain = short_reply(40);
    CHECK_STATUS(nudge_generate(m, NULL, COUNTING, NUDGE_CHAT_JSON, &plain, interrupt_after_two, &n, &text, NULL),
                 NUDGE_ERR_CANCELLED);
    CHECK(text == NULL && n == 2);
    nudge_string_free(full);
    nudge_string_free(cut);
}

int main(int argc, char **argv) {
    size_t live = nudge_live_handles();
    NudgeModel *m = open_model(model_path(argc, argv));
    NudgeAdapterOptions ao;
    CHECK_OK(nudge_adapter_options_init(&ao, sizeof ao));
    ao.r = 4;
    NudgeAdapter *serving = NULL;
    CHECK_OK(nudge_adapter_new(m, &ao, &serving));

    NudgeAdapter *old = NULL;
    serve_while_a_clone_trains(m, serving, &old);
    /* Two different adapters, both away from zero: train a copy of the trained one on. */
    NudgeAdapter *further = NULL;
    CHECK_OK(nudge_adapter_clone(serving, &further));
    NudgeDataset *d = pairs();
    NudgeTrainOptions o = quick_options(2);
    o.learning_rate = 1e-2;
    o.seed = 7;
    CHECK_OK(nudge_train(further, d, &o, NULL, NULL, NULL));
    stacks_equal_merged_sums(m, serving, further);
    session_matches_a_fresh_prefill(m, serving);
    stop_strings_and_cancellation(m);

    nudge_dataset_free(d);
    nudge_adapter_free(further);
    nudge_adapter_free(old);
    nudge_adapter_free(serving);
    nudge_model_free(m);
    CHECK(nudge_live_handles() == live);
    printf("serving: ok\n");
    return 0;
}
