/* Personalize a chat model from a user's feedback, on the CPU, through the C API.
 *
 * The user of this (imaginary) app prefers short, direct answers to long-winded ones.
 * Twelve of their choices between two answers become preference pairs; a LoRA adapter is
 * trained on them with DPO and saved in PEFT format; the model's log-probability of a
 * short and of a long answer to a question it was not trained on is printed before and
 * after.
 *
 * Build and run (from the repository root, after `cargo build --release -p nudge-ffi`):
 *   cc -std=c99 -Wall -Wextra -O2 -Iinclude examples/c/personalize.c -o personalize \
 *      -Ltarget/release -lnudge -Wl,-rpath,$PWD/target/release
 *   ./personalize models/SmolLM2-135M-Instruct.Q4_1.gguf [ADAPTER_DIR]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Feedback: a question, the answer the user picked, the one they did not. */
static const char *const FEEDBACK[12][3] = {
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
    {"What do bees make?", "Honey.",
     "Bees are fascinating creatures that do many things, and one of the most well known of these "
     "things is that they make a sweet substance called honey."},
    {"Which planet is closest to the sun?", "Mercury.",
     "There are several planets in our solar system, and if we look at which one is the closest to "
     "the sun, we find that it is the small planet Mercury."},
    {"What is frozen water called?", "Ice.",
     "When water gets cold enough, specifically below zero degrees Celsius, it changes its state and "
     "becomes a solid, which we commonly refer to as ice."},
    {"How many hours are in a day?", "24.",
     "A single day, measured as one full rotation of the Earth, is generally divided into a total "
     "of twenty four hours, as you may already know."},
    {"What animal says moo?", "A cow.",
     "The animal that is famous for making the sound moo is, in most cases and in most parts of the "
     "world, the common farm animal known as the cow."},
    {"What is the opposite of hot?", "Cold.",
     "If we are talking about temperature, then the word that is usually considered to be the "
     "opposite of hot would be the word cold, in most contexts."},
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

typedef struct Scores {
    double short_answer;
    double long_answer;
} Scores;

static Scores score(const NudgeModel *model, const NudgeAdapter *adapter) {
    char *prompt = message("user", HELD_OUT[0]);
    char *short_answer = message("assistant", HELD_OUT[1]);
    char *long_answer = message("assistant", HELD_OUT[2]);
    Scores s;
    uint32_t n_short = 0, n_long = 0;
    TRY(nudge_score(model, adapter, prompt, short_answer, NUDGE_CHAT_JSON, &s.short_answer, &n_short));
    TRY(nudge_score(model, adapter, prompt, long_answer, NUDGE_CHAT_JSON, &s.long_answer, &n_long));
    printf("  log p(short answer) = %8.3f (%u tokens), log p(long answer) = %8.3f (%u tokens)\n", s.short_answer,
           n_short, s.long_answer, n_long);
    free(prompt);
    free(short_answer);
    free(long_answer);
    return s;
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
        fprintf(stderr, "usage: %s MODEL [ADAPTER_DIR]\n", argv[0]);
        return 2;
    }
    const char *adapter_dir = argc > 2 ? argv[2] : "nudge-adapter";
    printf("nudge %s\n", nudge_version_string());

    NudgeModel *model = NULL;
    TRY(nudge_model_open(argv[1], NULL, &model));
    NudgeModelInfo info;
    info.struct_size = sizeof info;
    TRY(nudge_model_info(model, &info));
    printf("model: %s, %u layers, hidden %u, vocabulary %u, %.1f MiB mapped\n", info.architecture, info.num_layers,
           info.hidden_size, info.vocab_size, (double)info.mapped_bytes / (1 << 20));

    /* The feedback, as chat turns. */
    NudgeDataset *data = NULL;
    TRY(nudge_dataset_new(&data));
    for (size_t i = 0; i < 12; i++) {
        NudgePair pair;
        char *prompt = message("user", FEEDBACK[i][0]);
        char *chosen = message("assistant", FEEDBACK[i][1]);
        char *rejected = message("assistant", FEEDBACK[i][2]);
        pair.prompt = prompt;
        pair.chosen = chosen;
        pair.rejected = rejected;
        TRY(nudge_dataset_add_pairs(data, &pair, 1, NUDGE_CHAT_JSON)); /* copies the strings */
        free(prompt);
        free(chosen);
        free(rejected);
    }
    size_t n_pairs = 0;
    TRY(nudge_dataset_count(data, &n_pairs, NULL));
    printf("feedback: %zu preference pairs\n", n_pairs);

    printf("before training:\n");
    Scores before = score(model, NULL);

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
    train.batch_pairs = 4;
    train.epochs = 1;
    NudgeTrainResult result;
    result.struct_size = sizeof result;
    printf("training:\n");
    TRY(nudge_train(adapter, data, &train, progress, NULL, &result));
    printf("  %u steps in %.1f s\n", result.steps, result.seconds);

    TRY(nudge_adapter_save_peft(adapter, adapter_dir));
    printf("adapter saved to %s (PEFT)\n", adapter_dir);

    printf("after training:\n");
    Scores after = score(model, adapter);
    printf("short answer %+.3f nats, long answer %+.3f nats\n", after.short_answer - before.short_answer,
           after.long_answer - before.long_answer);

    nudge_adapter_free(adapter);
    nudge_dataset_free(data);
    nudge_model_free(model);
    return 0;
}
