# Seed 004's supervised quick start, with only the import line changed (hyperscalees.torch -> eggroll_rl).
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
from eggroll_rl import EggrollStrategy

# Some dummy data
X = torch.randn(1000, 8, device='cuda')
y = torch.randn(1000, 2, device='cuda')
loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)

# Your model
model = nn.Sequential(
    nn.Linear(8, 32), nn.ReLU(),
    nn.Linear(32, 2)
).cuda()

# Set up EGGROLL
strategy = EggrollStrategy(sigma=0.1, lr=0.01, rank=4)
strategy.setup(model)

population_size = 32

for epoch in range(100):
    for x_batch, y_batch in loader:
        # Stack the batch for each population member: (pop_size, batch_size, features)
        # Then reshape to (pop_size * batch_size, features) for batched_forward
        x_expanded = x_batch.unsqueeze(0).expand(population_size, -1, -1)
        x_flat = x_expanded.reshape(-1, x_batch.shape[-1])
        
        # Map each row to its population member
        member_ids = torch.arange(population_size, device='cuda').repeat_interleave(len(x_batch))
        
        with strategy.perturb(population_size=population_size, epoch=epoch) as pop:
            # One call evaluates all 32 perturbed models on all 64 samples
            preds_flat = pop.batched_forward(model, x_flat, member_ids=member_ids)
            preds = preds_flat.reshape(population_size, len(x_batch), -1)
            
            # Compute fitness (negative loss) for each population member
            y_expanded = y_batch.unsqueeze(0).expand(population_size, -1, -1)
            losses = ((preds - y_expanded) ** 2).mean(dim=(1, 2))  # MSE per member
            fitnesses = -losses  # Higher is better
        
        strategy.step(fitnesses)
    
    print(f"Epoch {epoch}: best_fitness={fitnesses.max():.4f}")
