/* Shared by the C tests: checks that stop the program with a message, and the data. */
#ifndef NUDGE_TEST_COMMON_H
#define NUDGE_TEST_COMMON_H

#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nudge.h"

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

#define CHECK_STATUS(call, want)                                                            \
    do {                                                                                    \
        NudgeStatus got_ = (call);                                                          \
        if (got_ != (want)) {                                                               \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s (message: \"%s\")\n",       \
                    __FILE__, __LINE__, #call, nudge_status_name((int32_t)got_),            \
                    nudge_status_name((int32_t)(want)), nudge_last_error_message());        \
            exit(1);                                                                        \
        }                                                                                   \
    } while (0)

#define CHECK_OK(call) CHECK_STATUS(call, NUDGE_OK)

/* The last error message contains `needle`. */
#define CHECK_MESSAGE(needle)                                                                  \
    do {                                                                                       \
        const char *msg_ = nudge_last_error_message();                                         \
        if (msg_ == NULL || strstr(msg_, (needle)) == NULL) {                                  \
            fprintf(stderr, "%s:%d: last error \"%s\" does not contain \"%s\"\n", __FILE__,    \
                    __LINE__, msg_ ? msg_ : "(null)", (needle));                               \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

/* The model: argv[1], else $NUDGE_MODEL. A missing model fails the test. */
static inline const char *model_path(int argc, char **argv) {
    const char *p = argc > 1 ? argv[1] : getenv("NUDGE_MODEL");
    if (p == NULL) {
        fprintf(stderr, "usage: %s MODEL (or set NUDGE_MODEL)\n", argv[0]);
        exit(2);
    }
    return p;
}

static inline NudgeModel *open_model(const char *path) {
    NudgeModelOptions o;
    NudgeModel *m = NULL;
    CHECK_OK(nudge_model_options_init(&o, sizeof o));
    o.threads = 2;
    CHECK_OK(nudge_model_open(path, &o, &m));
    CHECK(m != NULL);
    return m;
}

/* Short preference pairs: the chosen answer is the polite, concise one. */
static const NudgePair TEXT_PAIRS[] = {
    {"What is the capital of France?", "The capital of France is Paris.",
     "idk, look it up yourself"},
    {"Name a primary color.", "Red is a primary color.", "whatever, colors are boring"},
};

static const NudgePair CHAT_PAIRS[] = {
    {"[{\"role\": \"user\", \"content\": \"How many legs does a cat have?\"}]",
     "[{\"role\": \"assistant\", \"content\": \"A cat has four legs.\"}]",
     "[{\"role\": \"assistant\", \"content\": \"Why do you care?\"}]"},
    {"[{\"role\": \"user\", \"content\": \"Say hello.\"}]",
     "[{\"role\": \"assistant\", \"content\": \"Hello! How can I help?\"}]",
     "[{\"role\": \"assistant\", \"content\": \"No.\"}]"},
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static inline NudgeTrainOptions quick_options(uint32_t max_steps) {
    NudgeTrainOptions o;
    CHECK_OK(nudge_train_options_init(&o, sizeof o));
    o.max_steps = max_steps;
    o.batch_pairs = 2;
    o.learning_rate = 1e-3;
    o.threads = 2;
    return o;
}

static inline NudgeTrainResult empty_result(void) {
    NudgeTrainResult r;
    CHECK_OK(nudge_train_result_init(&r, sizeof r));
    CHECK(r.struct_size == sizeof r && r.steps == 0);
    return r;
}

/* A fresh directory under $TMPDIR (or /tmp); remove_adapter_dir() deletes it. */
static inline void make_temp_dir(char *buf, size_t n) {
    const char *base = getenv("TMPDIR");
    snprintf(buf, n, "%s/nudge-c-XXXXXX", base ? base : "/tmp");
    CHECK(mkdtemp(buf) != NULL);
}

static inline int file_exists_nonempty(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return 0;
    }
    int c = fgetc(f);
    fclose(f);
    return c != EOF;
}

/* The files a merged export writes (chat_template.jinja when the model has a template). */
static const char *const MERGED_FILES[] = {"config.json", "tokenizer.json", "tokenizer_config.json",
                                           "chat_template.jinja", "model.safetensors"};

static inline void remove_adapter_dir(const char *dir) {
    char p[4096];
    snprintf(p, sizeof p, "%s/adapter.gguf", dir);
    unlink(p);
    for (size_t i = 0; i < sizeof MERGED_FILES / sizeof MERGED_FILES[0]; i++) {
        snprintf(p, sizeof p, "%s/merged/%s", dir, MERGED_FILES[i]);
        unlink(p);
    }
    snprintf(p, sizeof p, "%s/merged", dir);
    rmdir(p);
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    unlink(p);
    rmdir(dir);
}

#endif
