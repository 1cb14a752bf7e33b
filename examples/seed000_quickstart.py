# Seed 000's quick start, with only the import line changed (hyperscalees' `eggroll` -> `eggroll_rl`).
import torch
import torch.nn as nn
from eggroll_rl import EGGROLLTrainer

# Define your model
class MyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(10, 32),
            nn.ReLU(),
            nn.Linear(32, 1)
        )

    def forward(self, batch, labels=None, is_training=True):
        output = self.net(batch)
        loss = torch.mean((output - 1.0) ** 2)
        return {'loss': loss}

# Create model and trainer
device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
model = MyModel().to(device)

trainer = EGGROLLTrainer(
    model=model,
    device=device,
    rank=8,              # Rank of low-rank perturbation
    sigma=0.2,           # Perturbation scale
    learning_rate=0.03,   # Learning rate
    n_workers=64,        # Number of perturbation samples per iteration
    grad_clip=1.0,        # Gradient clipping threshold
    normalize_fitness=True,
    base_seed=0,
    optimizer='adamw',    # Optional: 'sgd', 'adam', 'adamw', or None for simple SGD
    optimizer_kwargs={'betas': (0.9, 0.999)},  # Optional optimizer arguments
)

# Training loop
for epoch in range(100):
    batch = torch.randn(64, 10, device=device)
    metrics = trainer.train_step(batch)
    print(f"Epoch {epoch}: Loss = {metrics['loss']:.6f}")
