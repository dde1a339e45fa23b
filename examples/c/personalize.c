/* Personalize a chat model from a user's feedback, on the CPU, through the C API.
 *
 * The user of this (imaginary) app prefers short, direct answers to long-winded ones. As
 * they use the app, it records a dozen thumbs (up on a short answer, down on a long one)
 * in a crash-safe feedback journal. Then it trains a LoRA adapter on what the journal
 * holds (a thumb up and a thumb down on the same question make a DPO preference pair),
 * marks those events as trained, saves the adapter both as a PEFT directory and as a
 * llama.cpp LoRA GGUF, and prints the model's answer to a question it was not trained
 * on, before and after.
 *
 * Build and run (from the repository root, after `cargo build --release -p nudge-ffi`):
 *   cc -std=c99 -Wall -Wextra -O2 -Iinclude examples/c/personalize.c -o personalize \
 *      -Ltarget/release -lnudge -Wl,-rpath,$PWD/target/release
 *   ./personalize models/SmolLM2-135M-Instruct.Q4_1.gguf [OUT_DIR]
 * Set NUDGE_THREADS to choose the worker threads (1: the calling thread only).
 * OUT_DIR (default nudge-out) receives feedback.journal, the PEFT adapter (peft/) and
 * adapter.gguf. Run again, the journal already holds the feedback: the retried events are
 * recognized, and the run trains on the whole journal since nothing is new.
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "nudge.h"

/* A failed call: print why and stop. */
#define TRY(call)                                                                              \
    do {                                                                                       \
        NudgeStatus s_ = (call);                                                               \
        if (s_ != NUDGE_OK) {                                                                  \
            fprintf(stderr, "%s: %s: %s\n", #call, nudge_status_name((int32_t)s_),             \
                    nudge_last_error_message());                                               \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

/* Feedback: a question, the answer the user liked, the one they did not. */
static const char *const FEEDBACK[6][3] = {
    {"What is the boiling point of water?", "100 degrees Celsius at sea level.",
     "Well, that is a great question, and there are many things to consider, but generally speaking "
     "water tends to boil at around 100 degrees Celsius, depending on various factors."},
    {"How many days are in a week?", "Seven.",
     "A week, as most people know it, is traditionally made up of a number of days, and that number "
     "happens to be seven, which has a long history."},
    {"What color is the sky on a clear day?", "Blue.",
     "On a clear day, when there are no clouds around, the sky usually looks like it is a kind of "
     "blue color, because of the way light scatters."},
    {"What is 2 plus 2?", "4.",
     "Let us think about this carefully. If you take two and you add another two to it, then after "
     "some consideration you will arrive at four."},
    {"What is the capital of Italy?", "Rome.",
     "Italy, a beautiful country in southern Europe with a rich history and culture, has as its "
     "capital the famous and ancient city of Rome."},
    {"How many legs does a spider have?", "Eight.",
     "Spiders, which are arachnids and not insects as many people think, typically have a total of "
     "eight legs, arranged in four pairs."},
};

/* A question the adapter never sees, with a short and a long answer. */
static const char *const HELD_OUT[3] = {
    "What is the largest ocean on Earth?", "The Pacific.",
    "There are several oceans on our planet, and when it comes to size, the one that is generally "
    "considered to be the largest of them all is the Pacific Ocean."};

/* One chat message as JSON (the texts above hold no quotes or backslashes). */
static char *message(const char *role, const char *content) {
    size_t n = strlen(role) + strlen(content) + 64;
    char *s = malloc(n);
    if (s == NULL) {
        exit(1);
    }
    snprintf(s, n, "[{\"role\": \"%s\", \"content\": \"%s\"}]", role, content);
    return s;
}

static int32_t show_token(uint32_t token_id, const char *text, size_t text_len, void *user_data) {
    (void)token_id;
    (void)user_data;
    fwrite(text, 1, text_len, stdout); /* the reply as it is generated */
    fflush(stdout);
    return 0; /* non-zero would stop the reply here */
}

/* The model's greedy answer to the held-out question, with the adapter (NULL: without). */
static void answer(const NudgeModel *model, const NudgeAdapter *adapter) {
    char *prompt = message("user", HELD_OUT[0]);
    NudgeGenerateOptions o;
    TRY(nudge_generate_options_init(&o, sizeof o));
    o.max_new_tokens = 48;
    char *text = NULL;
    uint32_t stop = 0;
    printf("  Q: %s\n  A: ", HELD_OUT[0]);
    TRY(nudge_generate(model, adapter, prompt, NUDGE_CHAT_JSON, &o, show_token, NULL, &text, &stop));
    printf("\n  (%zu bytes, %s)\n", strlen(text), stop == NUDGE_STOP_EOS ? "finished" : "cut at 48 tokens");
    nudge_string_free(text);
    free(prompt);
}

static double score(const NudgeModel *model, const NudgeAdapter *adapter, const char *completion) {
    char *prompt = message("user", HELD_OUT[0]);
    char *reply = message("assistant", completion);
    double logp = 0.0;
    TRY(nudge_score(model, adapter, prompt, reply, NUDGE_CHAT_JSON, &logp, NULL));
    free(prompt);
    free(reply);
    return logp;
}

static int32_t progress(const NudgeStepMetrics *m, void *user_data) {
    (void)user_data;
    printf("  step %u/%u  loss %.4f  rewards/accuracies %.2f  rewards/margins %+.4f  %.0f tokens/s\n", m->step,
           m->total_steps, m->loss, m->rewards_accuracies, m->rewards_margins, m->tokens_per_s);
    fflush(stdout);
    return 0; /* non-zero would stop the run after this step */
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [OUT_DIR]\n", argv[0]);
        return 2;
    }
    const char *out_dir = argc > 2 ? argv[2] : "nudge-out";
    printf("nudge %s\n", nudge_version_string());

    /* NUDGE_THREADS=1 keeps every call on this thread (no worker thread is started), as
     * an app on a small device or a host without threads may want; default: every core. */
    NudgeModelOptions mo;
    TRY(nudge_model_options_init(&mo, sizeof mo));
    const char *threads = getenv("NUDGE_THREADS");
    if (threads != NULL) {
        mo.threads = (uint32_t)strtoul(threads, NULL, 10);
    }
    NudgeModel *model = NULL;
    TRY(nudge_model_open(argv[1], &mo, &model));
    NudgeModelInfo info;
    info.struct_size = sizeof info;
    TRY(nudge_model_info(model, &info));
    printf("model: %s, %u layers, hidden %u, vocabulary %u, %.1f MiB mapped\n", info.architecture, info.num_layers,
           info.hidden_size, info.vocab_size, (double)info.mapped_bytes / (1 << 20));

    char journal_path[4096], peft_dir[4096], gguf_path[4096];
    snprintf(journal_path, sizeof journal_path, "%s/feedback.journal", out_dir);
    snprintf(peft_dir, sizeof peft_dir, "%s/peft", out_dir);
    snprintf(gguf_path, sizeof gguf_path, "%s/adapter.gguf", out_dir);
    mkdir(out_dir, 0755); /* an existing directory is fine */

    /* The app records each thumb as the user gives it, with an id of its own: an event
     * recorded twice (a retry) trains once. */
    NudgeJournal *journal = NULL;
    TRY(nudge_journal_open(journal_path, NULL, &journal));
    for (size_t i = 0; i < 6; i++) {
        char id[32];
        char *prompt = message("user", FEEDBACK[i][0]);
        char *liked = message("assistant", FEEDBACK[i][1]);
        char *disliked = message("assistant", FEEDBACK[i][2]);
        snprintf(id, sizeof id, "q%zu-up", i);
        TRY(nudge_journal_add_thumb(journal, id, prompt, liked, NUDGE_CHAT_JSON, 1, NAN, NULL));
        snprintf(id, sizeof id, "q%zu-down", i);
        TRY(nudge_journal_add_thumb(journal, id, prompt, disliked, NUDGE_CHAT_JSON, 0, NAN, NULL));
        free(prompt);
        free(liked);
        free(disliked);
    }
    NudgeJournalStats js;
    js.struct_size = sizeof js;
    TRY(nudge_journal_stats(journal, &js));
    printf("journal: %u thumbs (%u up, %u down), %u new since the last training\n", js.thumbs, js.thumbs_up,
           js.thumbs_down, js.new_since_training);

    /* Training data from the journal's new events: thumbs up and down on one question pair up. */
    NudgeDataset *data = NULL;
    TRY(nudge_dataset_new(&data));
    NudgeJournalDataOptions take;
    TRY(nudge_journal_data_options_init(&take, sizeof take));
    size_t n_pairs = 0;
    TRY(nudge_dataset_add_journal(data, journal, &take, &n_pairs, NULL));
    if (n_pairs == 0) {
        printf("no new feedback since the last run: training on the whole journal\n");
        take.only_new = 0;
        TRY(nudge_dataset_add_journal(data, journal, &take, &n_pairs, NULL));
    }
    printf("feedback: %zu preference pairs\n", n_pairs);

    double short_before = score(model, NULL, HELD_OUT[1]), long_before = score(model, NULL, HELD_OUT[2]);
    printf("before training:\n");
    answer(model, NULL);

    NudgeAdapterOptions lora;
    TRY(nudge_adapter_options_init(&lora, sizeof lora));
    lora.r = 8;
    lora.alpha = 16.0f;
    NudgeAdapter *adapter = NULL;
    TRY(nudge_adapter_new(model, &lora, &adapter));

    NudgeTrainOptions train;
    TRY(nudge_train_options_init(&train, sizeof train));
    train.loss = "sigmoid"; /* DPO */
    train.beta = 0.1;
    train.learning_rate = 5e-4;
    train.batch_pairs = 2;
    train.epochs = 1;
    NudgeTrainResult result;
    result.struct_size = sizeof result;
    printf("training:\n");
    TRY(nudge_train(adapter, data, &train, progress, NULL, &result));
    printf("  %u steps in %.1f s\n", result.steps, result.seconds);
    TRY(nudge_journal_mark_trained(journal, data)); /* the next run trains on newer feedback */

    TRY(nudge_adapter_save_peft(adapter, peft_dir));
    TRY(nudge_adapter_save_gguf(adapter, gguf_path, NUDGE_DTYPE_F16));
    printf("adapter saved to %s (PEFT) and %s (llama.cpp: llama-cli -m MODEL --lora %s)\n", peft_dir, gguf_path,
           gguf_path);

    printf("after training:\n");
    answer(model, adapter);
    double short_after = score(model, adapter, HELD_OUT[1]), long_after = score(model, adapter, HELD_OUT[2]);
    printf("log p of a short answer %+.3f nats, of a long answer %+.3f nats\n", short_after - short_before,
           long_after - long_before);

    nudge_adapter_free(adapter);
    nudge_dataset_free(data);
    nudge_journal_free(journal);
    nudge_model_free(model);
    return 0;
}
